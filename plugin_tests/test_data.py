"""tokenize(): which tokens are learned."""

from __future__ import annotations

import pytest

from superduper_transformers.hf.data import IGNORE_INDEX, DataError, check_rows
from superduper_transformers.training import tokenize


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_completion_only_masks_the_prompt(tokenizer):
    out = tokenize(tokenizer, {"x": "5+1=", "y": "6"}, "x", "y")
    prompt_len = len(tokenizer("5+1=")["input_ids"])
    assert out["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    # the completion and EOS are learned, and they are the tokens of the answer
    learned = out["labels"][prompt_len:]
    assert learned == out["input_ids"][prompt_len:]
    assert tokenizer.decode(learned, skip_special_tokens=True) == "6"
    assert learned[-1] == tokenizer.eos_token_id
    assert out["attention_mask"] == [1] * len(out["input_ids"])


def test_whole_text_is_learned_without_y(tokenizer):
    out = tokenize(tokenizer, {"text": "5+1=6"}, "text", None)
    assert out["labels"] == out["input_ids"]
    assert tokenizer.decode(out["input_ids"], skip_special_tokens=True) == "5+1=6"
    assert IGNORE_INDEX not in out["labels"]


def test_prompt_template_and_truncation(tokenizer):
    out = tokenize(
        tokenizer, {"x": "5+1=", "y": "6"}, "x", "y", max_length=6, prompt_template="Q: {input}"
    )
    assert len(out["input_ids"]) == len(out["labels"]) == 6
    assert tokenizer.decode(out["input_ids"]).startswith("Q: 5+1")
    assert set(out["labels"]) == {IGNORE_INDEX}  # the completion was cut away


def test_check_rows_messages():
    with pytest.raises(DataError, match="empty"):
        check_rows([], "x", "y", "training rows")
    with pytest.raises(DataError, match=r"Key `y` is missing from row 0 .*keys \['x'\]"):
        check_rows([{"x": "a"}], "x", "y", "training rows")
    with pytest.raises(DataError, match=r"Key `y` of row 1 .* holds a int .*needs text"):
        check_rows([{"x": "a", "y": "b"}, {"x": "a", "y": 3}], "x", "y", "training rows")


def test_chat_format_wraps_the_prompt_as_a_user_turn(tokenizer):
    out = tokenize(tokenizer, {"x": "5+1=", "y": "6"}, "x", "y", chat_format=True)
    masked = [i for i, label in zip(out["input_ids"], out["labels"]) if label == IGNORE_INDEX]
    # the tiny tokenizer has no chat template: ChatML is used, as text
    assert tokenizer.decode(masked) == "<|im_start|>user\n5+1=<|im_end|>\n<|im_start|>assistant\n"
    learned = [label for label in out["labels"] if label != IGNORE_INDEX]
    assert tokenizer.decode(learned, skip_special_tokens=True) == "6"
