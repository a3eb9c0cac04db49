"""`task=generate`: the model writes its answer; an extractor reads it; exact match scores it.

A prepared row holds `text` (the question, as the model is prompted), `target` (what it is trained to
write: a worked solution; training rows only need it) and `label` (the gold answer, as the extractor
reads it: "72", "C", "answer2"). Training is teacher-forced over the whole target (its end-of-turn
included), cut to `task.max_target_tokens` (a cut target is counted, logged as `truncated_targets`
and warned about). Scoring generates after each prompt with the intervention on the prompt only
(`engine.generate`), greedy unless `task.do_sample`, up to `task.max_new_tokens`, and compares the
extracted answer with the gold one (`extract.py`: the last number within 1e-3, a letter, a keyword,
the text, a regex).

Metrics: `accuracy` (exact match), `no_answer_rate` (outputs the extractor finds nothing in),
`mean_generated_tokens`, `unfinished_rate` (outputs cut by max_new_tokens), `gold_unreadable` (gold
answers the extractor cannot read: counted wrong, listed in a warning); for the run,
`tokens_per_second` of the decoding.
"""

from __future__ import annotations

import logging

import numpy as np

from . import register
from .base import GENERATE, Task
from .chat import PromptBuilder
from .extract import of as extractor_of

log = logging.getLogger(__name__)
SHOWN = 5  # rows a warning names


def decoding(tcfg, stop_ids=(), seed: int = 0):
    """The decoding settings of a task config (`engine.generate.Decoding`)."""
    from ..engine.generate import Decoding

    return Decoding(int(tcfg.get("max_new_tokens", 256)), tuple(stop_ids), bool(tcfg.get("do_sample", False)),
                    float(tcfg.get("temperature", 1.0)), int(tcfg.get("top_k", 0)), float(tcfg.get("top_p", 1.0)),
                    int(seed if tcfg.get("seed") is None else tcfg.get("seed")))  # fmt: skip


def listed_rows(rows) -> str:
    rows = [int(r) + 1 for r in rows]
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    return ", ".join(map(str, rows[:SHOWN])) + more


@register
class Generate(Task):
    names = ("generate",)
    family = GENERATE
    display = "generated answers"
    val_metrics = ("accuracy", "no_answer_rate", "mean_generated_tokens")

    def __init__(self, tcfg):
        super().__init__(tcfg)
        self.extractor = None
        self.speed: float = float("nan")
        self.truncated = 0
        self.seed = 0
        self.data_extractor = tcfg.get("data_extractor") if tcfg is not None else None

    def settings(self) -> dict:
        keys = ("extractor", "keywords", "pattern", "max_new_tokens", "max_target_tokens", "do_sample", "temperature",
                "top_k", "top_p")  # fmt: skip
        return {k: (list(v) if k == "keywords" and v is not None else v) for k in keys
                if (v := self.cfg.get(k)) is not None}  # fmt: skip

    def saved(self) -> dict:
        found = self.extractor.name if self.extractor else None
        return {"name": self.names[0], **self.settings(), "data_extractor": found or self.data_extractor}

    def bind(self, cfg) -> None:
        dcfg = cfg.get("data")
        if dcfg is not None and dcfg.get("extractor"):
            self.data_extractor = dcfg.get("extractor")
        self.seed = int(cfg.get("seed") or 0)

    def check(self, cfg) -> None:
        from ..config import ConfigError

        self.bind(cfg)
        self.extractor = extractor_of(self.cfg, self.data_extractor)
        decoding(self.cfg).check()
        if int(self.cfg.get("max_target_tokens", 1)) < 1:
            raise ConfigError(f"task.max_target_tokens={self.cfg.max_target_tokens} is not valid: give a number of "
                              "tokens >= 1 (a longer target is cut and counted)")  # fmt: skip

    def get_extractor(self):
        if self.extractor is None:
            self.extractor = extractor_of(self.cfg, self.data_extractor)
        return self.extractor

    def check_data(self, prepared) -> None:
        from ..data.recipes import DataError

        for name, part in (("train", prepared.train), ("validation", prepared.val), ("test", prepared.eval)):
            if len(part) and "label" not in part:
                raise DataError(f"task=generate needs a gold answer (column label) in the {name} rows")
        if len(prepared.train):
            if "target" not in prepared.train:
                raise DataError("task=generate trains on a target text (column target: a worked solution): this data "
                                "has none; choose a data config with targets (data=gsm8k, ...)")  # fmt: skip
            empty = np.flatnonzero(
                prepared.train["target"].isna() | (prepared.train["target"].astype(str).str.strip() == "")
            )
            if len(empty):
                raise DataError(f"task=generate: {len(empty)} training row(s) have no target text (rows {listed_rows(empty)}, "
                                "row 1 = the first): give each a target, or leave them out")  # fmt: skip
        extract = self.get_extractor()
        for name, part in (("validation", prepared.val), ("test", prepared.eval)):
            bad = [i for i, g in enumerate(part["label"]) if extract(g) is None] if len(part) else []
            if bad:
                log.warning("%d of %d %s gold answers cannot be read by task.extractor=%s (rows %s, row 1 = the first): "
                            "they are counted wrong (gold_unreadable)", len(bad), len(part), name, extract.name,
                            listed_rows(bad))  # fmt: skip

    def builder(self, tokenizer, cfg, prepared=None):
        builder = PromptBuilder(tokenizer, cfg.data.system_prompt, cfg.trainer.max_length, cut="middle")
        builder.max_target = int(self.cfg.get("max_target_tokens", 512))
        return builder

    def examples(self, builder, frame):
        targets = builder.said(frame["target"])
        cut = [len(t) > builder.max_target for t in targets]
        self.truncated = int(sum(cut))
        if self.truncated:
            log.warning("%d of %d training targets are longer than task.max_target_tokens=%d and were cut (the longest "
                        "has %d tokens): raise it to train on whole solutions", self.truncated, len(targets),
                        builder.max_target, max(map(len, targets)))  # fmt: skip
        return list(
            zip(builder.prompts(frame["text"]), [t[: builder.max_target] for t in targets], strict=True)
        )

    def tails(self, builder):
        return []  # each example's own answer is stored with it when it trains; scoring adds none

    def score(self, scorer, builder, frame, batch_size: int, on_tokens=None):
        prompts = builder.prompts(frame["text"])
        if not prompts:
            return {
                "generated": np.asarray([], dtype=object),
                "tokens": np.zeros(0),
                "stopped": np.zeros(0, bool),
            }
        found = scorer.generate(
            prompts, decoding(self.cfg, builder.stop_ids, self.seed), batch_size, on_tokens
        )
        self.speed = found.tokens_per_second
        texts = builder.tokenizer.batch_decode(found.tokens, skip_special_tokens=True)
        return {"generated": np.asarray(texts, dtype=object), "tokens": np.asarray([len(t) for t in found.tokens]),
                "stopped": found.stopped}  # fmt: skip

    def judged(self, frame, scores):
        """(extracted answers, gold answers, correct) of each row."""
        extract = self.get_extractor()
        found = [extract(t) for t in scores["generated"]]
        gold = (
            [extract(g) for g in frame["label"]] if "label" in frame else [None] * len(found)
        )  # served: none
        right = np.asarray([extract.same(f, g) for f, g in zip(found, gold, strict=True)], dtype=bool)
        return found, gold, right

    def metrics(self, frame, scores) -> dict:
        found, gold, right = self.judged(frame, scores)
        n = len(found)
        if not n:
            return {"accuracy": float("nan")}
        return {
            "accuracy": float(right.mean()),
            "no_answer_rate": float(np.mean([f is None for f in found])),
            "mean_generated_tokens": float(np.mean(scores["tokens"])),
            "unfinished_rate": float(1 - np.mean(scores["stopped"])),
            "gold_unreadable": float(sum(g is None for g in gold)),
        }

    def run_metrics(self) -> dict:
        return {"tokens_per_second": self.speed, "truncated_targets": float(self.truncated)}

    def finite(self, scores) -> np.ndarray:
        return np.ones(len(scores["generated"]), dtype=bool)

    def judged_labels(self) -> bool:
        return False

    def table(self, frame, scores):
        found, gold, right = self.judged(frame, scores)
        return frame.assign(
            generated=list(scores["generated"]),
            answer=[f if f is not None else "" for f in found],
            gold=[g if g is not None else "" for g in gold],
            correct=right.astype(int),
            prediction=[f if f is not None else "" for f in found],
            generated_tokens=np.asarray(scores["tokens"], dtype=int),
            stopped=np.asarray(scores["stopped"], dtype=bool),
        )

    def sample(self, table, n: int = 50):
        """The first `n` predictions of each split as an MLflow table (prompt, generated, answers, correct)."""
        columns = [
            c for c in ("split", "correct", "answer", "gold", "text", "generated") if c in table
        ]  # the verdict first
        return (
            table.groupby("split", sort=False).head(n)[columns]
            if "split" in table
            else table.head(n)[columns]
        )

    def served_outputs(self) -> list[tuple[str, str]]:
        return [("generated", "string"), ("answer", "string")]

    def answers(self, table):
        return table[["text"]].assign(
            generated=table["generated"].astype(str), answer=table["answer"].astype(str)
        )
