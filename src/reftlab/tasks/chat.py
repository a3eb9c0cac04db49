"""Texts as chat prompts, and answers as the tokens that follow them.

The prompt is the model's chat template with the dataset's system prompt and the text as the user
message, ending with the assistant header. A text that does not fit `max_length` is cut (the
template around it is kept, so the answer position is always the last prompt token): at its end, or
with `cut="middle"` in its middle (its first tokens and its end kept: a multiple-choice instruction
keeps its lead-in, its options and its answer format, and loses part of the question). An answer is
what the template puts after the prompt when the assistant says it (its end-of-turn included).
"""

from __future__ import annotations

PLACEHOLDER = "\u2063TEXT\u2063"
SAID = "\u2063SAID\u2063"  # where an answer's own text goes in the assistant's turn
FALLBACK_TEMPLATE = "{system}\n\n{text}\nAnswer:"
YES, NO = "Yes", "No"


class PromptBuilder:
    """Chat prompts of texts and the token ids of each of `answers` after them. With the answers
    Yes and No (the default), `yes_id`/`no_id` are their first tokens, which must differ."""

    HEAD = 16  # the tokens `cut="middle"` keeps at a text's start (at most a quarter of the budget)

    def __init__(self, tokenizer, system_prompt: str, max_length: int, answers=(YES, NO), cut: str = "end"):
        if cut not in ("end", "middle"):
            raise ValueError(f"cut={cut!r} is not valid: choose 'end' or 'middle'")
        self.cut = cut
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.max_length = int(max_length)
        if tokenizer.chat_template:
            prompt = self._render(PLACEHOLDER, None)
            said = {a: self._render(PLACEHOLDER, a)[len(prompt) :] for a in answers}
            self.turn = tuple(self._render(PLACEHOLDER, SAID)[len(prompt) :].split(SAID))
        else:
            prompt = FALLBACK_TEMPLATE.format(system=system_prompt, text=PLACEHOLDER)
            said = {a: f" {a}{tokenizer.eos_token}" for a in answers}
            self.turn = (" ", tokenizer.eos_token or "")
        before, after = prompt.split(PLACEHOLDER)
        self.before = self._ids(before)
        self.after = self._ids(after)
        self.answer_ids = {a: self._ids(said[a]) for a in answers}
        if set(answers) == {YES, NO}:
            self.yes_id = self.answer_ids[YES][0]
            self.no_id = self.answer_ids[NO][0]
            if self.yes_id == self.no_id:
                raise ValueError("The tokenizer gives 'Yes' and 'No' the same first token")
        self.budget = self.max_length - len(self.before) - len(self.after)
        if self.budget < 1:
            raise ValueError(
                f"trainer.max_length={self.max_length} leaves no room for text: the prompt template alone "
                f"takes {len(self.before) + len(self.after)} tokens"
            )

    def _render(self, text: str, answer: str | None) -> str:
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}]
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=answer is None
        )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def said(self, texts) -> list[list[int]]:
        """The token ids of each text as the assistant's whole answer (its end-of-turn included)."""
        before, after = self.turn
        texts = list(texts)
        return (
            self.tokenizer([before + str(t) + after for t in texts], add_special_tokens=False)["input_ids"]
            if texts
            else []
        )

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """What ends the assistant's answer when it generates: its end-of-turn token (the first token
        after an answer's text) and the end-of-sequence token."""
        ends = self._ids(self.turn[1]) if self.turn[1] else []
        eos = self.tokenizer.eos_token_id
        return tuple(sorted({*ends[:1], *([eos] if eos is not None else [])}))

    @property
    def tails(self) -> list[list[int]]:
        """Each answer but its last token: what a training sequence adds after the prompt."""
        return [ids[:-1] for ids in self.answer_ids.values()]

    def prompts(self, texts) -> list[list[int]]:
        texts = list(texts)
        if not texts:  # no texts, no prompts (the tokenizer raises IndexError on an empty list)
            return []
        bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [self.before + self._fit(body) + self.after for body in bodies]

    def _fit(self, body: list[int]) -> list[int]:
        if len(body) <= self.budget or self.cut == "end":
            return body[: self.budget]
        head = min(self.HEAD, self.budget // 4)
        return body[:head] + body[len(body) - (self.budget - head) :]

    def examples(self, texts, labels) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids) pairs for training."""
        return [(p, self.answer_ids[label]) for p, label in zip(self.prompts(texts), labels, strict=True)]
