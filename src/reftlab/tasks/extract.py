"""Answer extractors: what turns a generated text (and a gold answer) into an answer to compare.

As the ReFT paper (and LLM-Adapters before it) scores generated answers:
- `last_number`: the last number in the text, commas removed (``-?\\d+\\.?\\d*``), equal to the gold
  number within 1e-3 (arithmetic: GSM8K, MAWPS, SVAMP);
- `letter`: the first capital A-E (AQuA's options);
- `keyword`: the first of `task.keywords` in the text (commonsense: answer1..answer5, true/false);
- `exact`: the text stripped, compared as it is;
- `regex`: the first match of `task.pattern` (its first group where it has one).

An extractor returns the answer as a string, or None where the text holds none.
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+\.?\d*")
LETTER = re.compile(r"[A-E]")
TOLERANCE = 1e-3
EXTRACTORS = ("last_number", "letter", "keyword", "exact", "regex")


class Extractor:
    def __init__(self, name: str, keywords=None, pattern: str | None = None):
        from ..config import ConfigError

        if name not in EXTRACTORS:
            raise ConfigError(f"task.extractor={name!r} is not valid: choose one of {', '.join(EXTRACTORS)}")
        self.name = name
        self.keywords = [str(k) for k in (keywords or [])]
        if name == "keyword" and not self.keywords:
            raise ConfigError(
                "task.extractor=keyword needs task.keywords, the answers to look for (e.g. [answer1, answer2])"
            )
        self.pattern = None
        if name == "regex":
            if not pattern:
                raise ConfigError("task.extractor=regex needs task.pattern, e.g. 'answer is (\\S+)'")
            try:
                self.pattern = re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"task.pattern={pattern!r} is not a valid regular expression: {e}") from e
        if self.keywords:  # longest first: "answer10" is not read as "answer1"
            alternatives = sorted(self.keywords, key=len, reverse=True)
            self.keyword_re = re.compile("|".join(re.escape(k) for k in alternatives))

    def __call__(self, text) -> str | None:
        if text is None:
            return None
        text = str(text)
        if self.name == "last_number":
            found = NUMBER.findall(text.replace(",", ""))
            return found[-1].rstrip(".") if found else None  # "7." as 7 (read within 1e-3 anyway)
        if self.name == "letter":
            found = LETTER.search(text)
            return found.group(0) if found else None
        if self.name == "keyword":
            found = self.keyword_re.search(text)
            return found.group(0) if found else None
        if self.name == "exact":
            return text.strip()
        found = self.pattern.search(text)
        if found is None:
            return None
        return found.group(1) if found.groups() else found.group(0)

    def same(self, predicted: str | None, gold: str | None) -> bool:
        """Whether an extracted answer is the gold one (numbers within 1e-3)."""
        if predicted is None or gold is None:
            return False
        if self.name == "last_number":
            try:
                return abs(float(predicted) - float(gold)) <= TOLERANCE
            except ValueError:
                return False
        return predicted == gold


def of(tcfg, default: str | None = None) -> Extractor:
    """The extractor `tcfg.extractor` names (null: `default`, the data's), with its keywords or pattern."""
    from ..config import ConfigError

    name = tcfg.get("extractor") or default
    if not name:
        raise ConfigError(f"task.extractor is not set and the data names none: choose one of {', '.join(EXTRACTORS)} "
                          "(e.g. task.extractor=last_number for arithmetic)")  # fmt: skip
    return Extractor(name, tcfg.get("keywords"), tcfg.get("pattern"))
