"""Prompts: cut to max_length with the chat template kept."""

import pytest

from reftlab.tasks.chat import PromptBuilder


def test_prompts_are_cut_to_max_length_and_keep_the_template(tiny4):
    tokenizer = tiny4[1]
    builder = PromptBuilder(tokenizer, "Is it deceptive?", 40)
    (prompt,) = builder.prompts(["word " * 500])
    assert len(prompt) == 40
    assert prompt[-len(builder.after) :] == builder.after
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="max_length=5"):
        PromptBuilder(tokenizer, "Is it deceptive?", 5)


def test_no_texts_make_no_prompts(tiny4):
    """An empty list in, an empty list out (the tokenizer alone raises IndexError on no texts)."""
    builder = PromptBuilder(tiny4[1], "Is it deceptive?", 40)
    assert builder.prompts([]) == [] and builder.examples([], []) == []
