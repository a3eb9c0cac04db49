"""`task=choice`: multiple choice, each example with its own 2-5 options and the key of the right one.

A prepared row holds `text` (the question with its options, as the model is prompted: LLM-Adapters'
instruction), `question` (the question alone), `options` (the options' texts), `keys` (what names
each option: answer1..answer5, true/false, ...) and `label` (the right key). Scored both ways, both
logged:

- as the ReFT paper trains it (`accuracy`): the chat prompt of `text`, the target "the correct answer
  is <key>"; the prediction is the key whose whole answer has the highest log-likelihood;
- as EleutherAI's evaluation harness scores it (`acc`, `acc_norm`): the log-likelihood of each
  option's text (" <option>") after "Question: <question>\\nAnswer:", without a chat template, the
  highest wins; `acc_norm` divides it by the continuation's length in characters first;
- as the ReFT paper reports it (`gen_accuracy`, with `task.generate`): the model generates after the
  chat prompt (greedy, `task.max_new_tokens`, the intervention on the prompt only); the first key
  in the text after "the correct answer is " (the whole text where that is missing) is its answer.

The chance rate is the mean of 1/options.
"""

from __future__ import annotations

import numpy as np

from ..data.choice import build_text, option_keys
from . import register
from .base import CHOICE, Task
from .chat import PromptBuilder
from .classify import softmax

KEYWORD = "the correct answer is {key}"
HARNESS_PROMPT = "Question: {question}\nAnswer:"


# LLM-Adapters' prompt for a question and its options (its ARC and OpenBookQA instructions), what a
# question without its own prompt is asked with
def instruction(question: str, options, keys) -> str:
    """The prompt of a question and its options in LLM-Adapters' words (`data.choice.build_text`)."""
    return build_text(question, list(options), list(keys))


def padded(rows: list, width: int, fill=np.nan) -> np.ndarray:
    """Per-example arrays of different lengths as one [N, width] array (`fill` where none)."""
    out = np.full((len(rows), width), fill, dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def best(scores: np.ndarray) -> np.ndarray:
    """Each row's highest column, NaN (no such option) never chosen."""
    return np.where(np.isnan(scores), -np.inf, scores).argmax(axis=1)


class HarnessPrompts:
    """The evaluation harness's prompts ("Question: ...\\nAnswer:") and continuations (" <option>") as
    token ids, the question cut to fit `max_length` with the longest option after it."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, int(max_length)
        before, after = HARNESS_PROMPT.split("{question}")
        self.before, self.after = self.ids(before), self.ids(after)

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, question: str, options) -> tuple[list[int], list[list[int]]]:
        conts = [self.ids(" " + str(o)) for o in options]
        room = self.max_length - len(self.before) - len(self.after) - max(map(len, conts))
        return self.before + self.ids(str(question))[: max(room, 1)] + self.after, conts


@register
class Choice(Task):
    names = ("choice",)
    family = CHOICE
    display = "multiple choice"
    val_metrics = ("accuracy", "acc", "acc_norm", "gen_accuracy")

    def __init__(self, tcfg):
        super().__init__(tcfg)
        saved = tcfg.get("keys") if tcfg is not None else None  # a saved run's (`saved`); else the data's
        self.keys: list[str] | None = [str(k) for k in saved] if saved else None

    def saved(self) -> dict:
        return {"name": self.names[0], "keys": list(self.keys or [])}

    def check_data(self, prepared) -> None:
        from ..data.recipes import DataError

        parts = [p for p in (prepared.train, prepared.val, prepared.eval) if len(p)]
        missing = [c for c in ("options", "keys", "question") if not all(c in p for p in parts)]
        if missing:
            raise DataError(f"task=choice needs a multiple-choice dataset (columns options, keys, question): "
                            f"this data has no {', '.join(missing)}; choose a data config with options (data=arc_easy, "
                            "data=openbookqa, ...) or task=yes_no / task=classify")  # fmt: skip
        keys = set()
        for part in parts:
            for n, (options, names, label) in enumerate(
                zip(part["options"], part["keys"], part["label"], strict=True)
            ):
                if len(options) < 2 or len(options) != len(names) or str(label) not in list(names):
                    raise DataError(f"row {n + 1} has {len(options)} option(s), keys {list(names)} and answer "
                                    f"{label!r}: each example needs 2 or more options and an answer among its keys")  # fmt: skip
                keys.update(str(k) for k in names)
        self.keys = sorted(keys)

    def builder(self, tokenizer, cfg, prepared=None):
        if self.keys is None and prepared is not None:
            self.check_data(prepared)
        answers = tuple(KEYWORD.format(key=k) for k in self.keys)
        builder = PromptBuilder(
            tokenizer, cfg.data.system_prompt, cfg.trainer.max_length, answers=answers, cut="middle"
        )  # a long question loses its middle, never its options
        builder.harness = HarnessPrompts(tokenizer, cfg.trainer.max_length)
        return builder

    def examples(self, builder, frame):
        targets = [KEYWORD.format(key=k) for k in frame["label"]]
        return builder.examples(frame["text"], targets)

    def score(self, scorer, builder, frame, batch_size: int):
        prompts = builder.prompts(frame["text"])
        answers = [[builder.answer_ids[KEYWORD.format(key=k)] for k in keys] for keys in frame["keys"]]
        keyword = scorer.loglik(prompts, answers, batch_size) if prompts else []
        asked = [builder.harness(q, o) for q, o in zip(frame["question"], frame["options"], strict=True)]
        harness = scorer.loglik([p for p, _ in asked], [c for _, c in asked], batch_size) if asked else []
        width = max((len(k) for k in frame["keys"]), default=2)
        chars = [[len(" " + str(o)) for o in options] for options in frame["options"]]
        out = {
            "keyword": padded(keyword, width),
            "harness": padded(harness, width),
            "chars": padded(chars, width),
        }
        if self.cfg is not None and self.cfg.get("generate") and hasattr(scorer, "generate") and prompts:
            from .generate import decoding

            found = scorer.generate(prompts, decoding({"max_new_tokens": self.cfg.get("max_new_tokens", 32)},
                                                      builder.stop_ids), batch_size)  # fmt: skip
            out["generated"] = np.asarray(builder.tokenizer.batch_decode(found.tokens, skip_special_tokens=True),
                                          dtype=object)  # fmt: skip
        return out

    def generated_keys(self, scores) -> list[str | None]:
        """The key each generated answer names: the first key after "the correct answer is " (the
        whole text where it does not say that), as the ReFT paper reads its commonsense answers."""
        from .extract import Extractor

        lead = KEYWORD.split("{key}")[0]
        find = Extractor("keyword", self.keys)
        return [find(t.split(lead, 1)[1] if lead in t else t) for t in scores["generated"]]

    def predicted(self, frame, scores) -> dict[str, np.ndarray]:
        """Each row's chosen option (its index) by each scoring."""
        return {"keyword": best(scores["keyword"]), "harness": best(scores["harness"]),
                "norm": best(scores["harness"] / scores["chars"])}  # fmt: skip

    def metrics(self, frame, scores) -> dict:
        right = np.asarray(
            [list(keys).index(str(label)) for keys, label in zip(frame["keys"], frame["label"], strict=True)]
        )
        chosen = self.predicted(frame, scores)
        n = max(len(right), 1)
        out = {
            "accuracy": float((chosen["keyword"] == right).sum() / n),
            "acc": float((chosen["harness"] == right).sum() / n),
            "acc_norm": float((chosen["norm"] == right).sum() / n),
            "chance": float(np.mean([1 / len(o) for o in frame["options"]])) if len(frame) else float("nan"),
        }
        if "generated" in scores:
            named = self.generated_keys(scores)
            out["gen_accuracy"] = float(
                sum(k == str(lab) for k, lab in zip(named, frame["label"], strict=True)) / n
            )
            out["gen_no_answer_rate"] = float(sum(k is None for k in named) / n)
        return out

    def finite(self, scores) -> np.ndarray:
        ok = np.ones(len(scores["keyword"]), dtype=bool)
        for name in ("keyword", "harness"):
            a = scores[name]
            ok &= ~np.isinf(a).any(1) & ~np.isnan(a).all(1)
        return ok

    def table(self, frame, scores):
        chosen = self.predicted(frame, scores)
        keys = [list(k) for k in frame["keys"]]
        probs = [softmax(row[~np.isnan(row)][None])[0] for row in scores["keyword"]]
        return frame.assign(
            prediction=[k[i] for k, i in zip(keys, chosen["keyword"], strict=True)],
            prediction_acc=[k[i] for k, i in zip(keys, chosen["harness"], strict=True)],
            prediction_acc_norm=[k[i] for k, i in zip(keys, chosen["norm"], strict=True)],
            probabilities=probs,
            loglik_keyword=[row[~np.isnan(row)] for row in scores["keyword"]],
            loglik_harness=[row[~np.isnan(row)] for row in scores["harness"]],
            **({"generated": list(scores["generated"]), "prediction_gen": [k or "" for k in self.generated_keys(scores)]}
               if "generated" in scores else {}),
        )  # fmt: skip

    def served_inputs(self) -> list[tuple[str, str, bool]]:
        return [("question", "string", True), ("options", "list[string]", True),
                ("text", "string", False), ("keys", "list[string]", False)]  # fmt: skip

    def served_outputs(self) -> list[tuple[str, str]]:
        return [("choice", "string"), ("choice_text", "string"), ("probabilities", "list[double]")]

    def request(self, frame):
        """The rows to score from a caller's frame: a `question` and its `options` (a list of 2 or more
        texts) each, optionally its `keys` (default answer1 .. answerN) and `text`, the prompt (default
        `instruction` of the question and options). A DataError names the rows that cannot be scored."""
        import pandas as pd

        from ..data.recipes import DataError

        if not len(frame):
            return pd.DataFrame({"question": [], "options": [], "keys": [], "text": []})
        absent = [c for c in ("question", "options") if c not in frame]
        if absent:
            raise DataError(f"no {' and no '.join(map(repr, absent))} column: a multiple-choice model takes a "
                            f"question and its options (a list) per row (its columns: {list(frame.columns)})")  # fmt: skip
        rows = []
        for n, row in enumerate(frame.to_dict("records"), start=1):
            question, options, keys = row["question"], as_list(row["options"]), as_list(row.get("keys"))
            text = row.get("text")
            problem = asked_wrong(question, row["options"], options, keys)
            if problem:
                raise DataError(f"row {n} (row 1 = the first): {problem}")
            options = [str(o) for o in options]
            keys = [str(k) for k in keys] if keys is not None else option_keys(len(options))
            text = instruction(question, options, keys) if missing(text) else str(text)
            rows.append({"question": str(question), "options": options, "keys": keys, "text": text})
        asked = {k for row in rows for k in row["keys"]}
        self.keys = sorted(set(self.keys or []) | asked)  # a key the run never saw is scored as any other
        return pd.DataFrame(rows)

    def answers(self, table):
        """Each question's chosen option (`choice`, its key; `choice_text`, its text) and the
        probability of each of its options (softmax over the keys' log-likelihoods)."""
        chosen = [list(keys).index(c) for keys, c in zip(table["keys"], table["prediction"], strict=True)]
        return table[["question"]].assign(
            choice=table["prediction"],
            choice_text=[list(o)[i] for o, i in zip(table["options"], chosen, strict=True)],
            probabilities=[[float(p) for p in row] for row in table["probabilities"]],
        )


def as_list(value):
    """A list-like cell (a list, tuple or array) as a list; a missing one (None, NaN) as None; anything
    else as it is."""
    if isinstance(value, list | tuple | np.ndarray):
        return list(value)
    return None if missing(value) else value


def missing(value) -> bool:
    """Whether a cell is null (None, NaN, pandas' NA)."""
    import pandas as pd

    return not isinstance(value, list | tuple | np.ndarray | dict) and bool(pd.isna(value))


def asked_wrong(question, given, options, keys) -> str | None:
    """What makes a question with these options and keys unanswerable, or None."""
    if missing(question):
        return "'question' is missing (null): give every row a question, or leave that row out"
    if not isinstance(options, list):
        return f"'options' is {given!r}: give a list of the options' texts"
    if len(options) < 2:
        return f"'options' has {len(options)} option(s) ({options}): a question needs 2 or more"
    if any(missing(o) for o in options):
        return f"'options' {options} has a missing (null) option: give each option a text"
    if keys is not None and (
        not isinstance(keys, list) or len(keys) != len(options) or len(set(keys)) < len(keys)
    ):
        return (f"'keys' {keys!r} do not name the {len(options)} options {options}: give one distinct key per "
                f"option, or none (then {'/'.join(option_keys(len(options)))})")  # fmt: skip
    return None
