"""Prompts: cut to max_length with the chat template kept."""

import pytest

from reftlab.prompts import PromptBuilder


def test_prompts_are_cut_to_max_length_and_keep_the_template(tiny4):
    tokenizer = tiny4[1]
    builder = PromptBuilder(tokenizer, "Is it deceptive?", 40)
    (prompt,) = builder.prompts(["word " * 500])
    assert len(prompt) == 40
    assert prompt[-len(builder.after) :] == builder.after
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="max_length=5"):
        PromptBuilder(tokenizer, "Is it deceptive?", 5)
