"""Typed settings: one dataclass per config option, registered with Hydra's ConfigStore.

Each YAML in conf/ names its schema first in its defaults list (`/schema/<group>@_here_: <name>`),
so a value of the wrong type fails when Hydra composes the config, naming the key
(`trainer.lr=abc`: "Value 'abc' of type 'str' could not be converted to Float, full_key:
trainer.lr"), before anything runs; a key the schema does not know is refused the same way.
Ranges and choices (an lr > 0, a layer the model has) are checked in `validate`. No torch here:
train.py imports this before Hydra composes.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class Trainer:
    epochs: int = 10
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 4.0e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_length: int = 512
    eval_batch_size: int = 16
    group_by_length: bool = True
    log_every: int = 10
    cache: str = "auto"
    cache_max_gb: float = 8.0
    cache_disk_gb: float = 20.0
    cache_from: int | None = None
    cache_dir: str | None = None


@dataclass
class Reft:
    """LoReFT and its variants (NoReFT, DiReFT, ConsReFT)."""

    method: str = "loreft"
    layer: Any = 15  # an int, a list of ints, or "all"
    component: str = "block_output"
    rank: int = 4
    positions: str = "l3"
    share_weights: bool = False
    dropout: float = 0.0


@dataclass
class Lora:
    method: str = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    layer: Any = None  # null (all), an int, a list, or "all"
    use_dora: bool = False  # DoRA (peft): weight-decomposed LoRA (intervention=dora)


@dataclass
class ZeroShot:
    method: str = "none"
    hint: str = ""


@dataclass
class Tfidf:
    method: str = "tfidf"
    max_ngram: int = 2
    min_df: int = 2
    C: float = 10.0


@dataclass
class Data:
    """What every dataset option has: where the data is, how it is split and capped, the prompt."""

    name: str = "csv"
    recipe: str = "table"
    path: str | None = None
    format: str | None = None
    split: str = "stratified"
    eval_fraction: float = 0.2
    split_seed: int = 42
    val_fraction: float = 0.15
    folds: int | None = None  # k-fold cross-validation: fold `fold` of `folds` is the test part
    fold: int = 0
    max_train: int | None = None
    max_val: int | None = None
    max_eval: int | None = None
    license: str | None = None
    system_prompt: str = ""
    revision: str | None = None  # an Oxen commit id
    remote: str | None = None
    keep: dict[str, Any] = field(default_factory=dict)  # column -> value or list: only those rows (null: all)


@dataclass
class TableData(Data):
    """A labelled table (CSV/TSV/parquet/JSONL): data=csv, data=opinion_spam."""

    header: bool = True
    text_column: Any = "text"  # a name, or a number for a file without a header
    label_column: Any = "label"  # a column, or a list of columns joined with a space into one label
    positive_label: Any = "Yes"  # one value or a list; null: the labels kept as they are (k classes)
    group_column: Any = None


@dataclass
class PersuasionData(Data):
    """The reference recipe on Anthropic's persuasion data."""

    upsample_seed: int = 12


@dataclass
class ChoiceData(Data):
    """Multiple choice (data/choice.py): LLM-Adapters' JSON (data=arc_easy, ...) or a table with options."""

    name: str = "choice"
    recipe: str = "choice"
    split: str = "random"  # random | stratified (the answer keys in proportion)
    test_path: str | None = None  # the test file, kept as given (null: data.eval_fraction of data.path)
    question_column: Any = "question"  # (tables) the question alone
    options_column: Any = None  # (tables) a column holding each question's options as a list
    option_columns: list[str] | None = None  # (tables) one column per option, e.g. [A, B, C, D]
    answer_column: Any = "answer"  # (tables) the right option: a key, a letter, an index or its text
    answer_type: str | None = (
        None  # (tables) key | letter | index0 | index1 | text (null: by the answers' form)
    )


@dataclass
class ArithmeticData(Data):
    """Questions with worked solutions and gold answers (data=gsm8k; MAWPS and AQuA as test files)."""

    name: str = "gsm8k"
    recipe: str = "arithmetic"
    split: str = "random"
    test_path: str | None = None  # the test file, kept as given (null: data.eval_fraction of data.path)
    test_format: str | None = (
        None  # gsm8k | llm_adapters (null: by the file's name: .jsonl gsm8k, .json llm_adapters)
    )
    calculator_notes: bool = False  # keep GSM8K's <<48/2=24>> notes in the targets (false: removed)
    answer_line: str = "The answer is {answer}."  # how a target ends (GSM8K's "#### 72" becomes this)
    extractor: str | None = "last_number"  # what reads its answers (task.extractor overrides)


@dataclass
class YesNoTask:
    name: str = "yes_no"


@dataclass
class ClassifyTask:
    name: str = "classify"
    labels: list[str] | None = None  # in order; null: every label of the data


@dataclass
class ChoiceTask:
    name: str = "choice"
    generate: bool = True  # also the ReFT paper's score by generation (gen_accuracy)
    max_new_tokens: int = 32  # the paper's for commonsense


@dataclass
class GenerateTask:
    name: str = "generate"
    extractor: str | None = None  # last_number | letter | keyword | exact | regex (null: the data's)
    keywords: list[str] | None = None  # extractor=keyword: the answers to look for
    pattern: str | None = None  # extractor=regex: a regular expression (its first group is the answer)
    max_new_tokens: int = 256
    max_target_tokens: int = 512  # a longer training target is cut (counted: truncated_targets)
    do_sample: bool = False  # greedy unless true
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None  # sampling seed (null: the run's seed)


SCHEMAS = {
    "task": {"yes_no": YesNoTask, "classify": ClassifyTask, "choice": ChoiceTask, "generate": GenerateTask},
    "data": {
        "table": TableData,
        "persuasion": PersuasionData,
        "choice": ChoiceData,
        "arithmetic": ArithmeticData,
    },
    "trainer": {"default": Trainer},
    "intervention": {"reft": Reft, "lora": Lora, "zero_shot": ZeroShot, "tfidf": Tfidf},
}


def register() -> None:
    """Make the schemas known to Hydra (idempotent; before any composition)."""
    store = ConfigStore.instance()
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


register()
