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


def test_a_long_prompt_loses_its_start_not_the_completion(tokenizer):
    out = tokenize(tokenizer, {"x": "5+1=", "y": "6"}, "x", "y", max_length=6, prompt_template="Q: {input}")
    assert len(out["input_ids"]) == len(out["labels"]) == 6
    # "Q: 5+1=" + "6" + EOS is 9 tokens: the first 3 prompt tokens are dropped
    assert tokenizer.decode(out["input_ids"][:4]) == "5+1="
    learned = [t for t in out["labels"] if t != IGNORE_INDEX]
    assert learned == [tokenizer.convert_tokens_to_ids("6"), tokenizer.eos_token_id]


def test_rows_longer_than_max_seq_length_are_counted(tokenizer, caplog_loguru):
    from superduper_transformers.hf.data import build_dataset

    rows = [{"x": "5+1=", "y": "6"}, {"x": "1234567+1=", "y": "1234568"}, {"x": "1=", "y": "123456789"}]
    ds = build_dataset(tokenizer, rows, "x", "y", max_length=10)
    assert [len(r) for r in ds["input_ids"]] == [6, 10, 10]
    assert any(
        "2 of 3 rows are longer than max_seq_length=10 tokens: 1 had the start of their prompt cut" in m
        and "1 lost their end" in m
        for m in caplog_loguru
    ), caplog_loguru


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


def _learned(example):
    return [t for t in example["labels"] if t != IGNORE_INDEX]


def test_a_prompt_longer_than_the_limit_still_leaves_part_of_the_completion(tokenizer, caplog_loguru):
    from superduper_transformers.hf.data import build_dataset, encode_batch

    # The case: a 600-token prompt, a 520-token completion (+ EOS), limit 512.
    row = {"x": "7" * 599 + "=", "y": "8" * 520}
    out = tokenize(tokenizer, row, "x", "y", max_length=512)
    assert len(out["input_ids"]) == 512
    # Half the window is the end of the prompt, half the start of the completion.
    assert tokenizer.decode(_learned(out)) == "8" * 256
    assert tokenizer.decode(out["input_ids"][:256]) == "7" * 255 + "="
    assert encode_batch(tokenizer, [row], "x", "y", 512) == ([out], ["end_lost"])  # the batched path

    build_dataset(tokenizer, [row, {"x": "5+1=", "y": "6"}], "x", "y", max_length=512)
    assert any("1 of 2 rows are longer" in m and "1 lost their end" in m for m in caplog_loguru)


def test_a_reply_past_the_limit_in_a_conversation_is_still_learned(tokenizer):
    from superduper_transformers.hf.data import encode_batch, encode_batch_reference

    long_user = {"role": "user", "content": "7" * 600}
    rows = [
        {"m": [long_user, {"role": "assistant", "content": "8" * 30}]},  # a short reply: kept whole
        {"m": [long_user, {"role": "assistant", "content": "9" * 520}]},  # a long one: its start
    ]
    examples, statuses = encode_batch_reference(tokenizer, rows, "m", None, 512)
    assert statuses == ["prompt_cut", "end_lost"]
    assert [len(e["input_ids"]) for e in examples] == [512, 512]
    assert "8" * 30 in tokenizer.decode(_learned(examples[0]))
    assert tokenizer.decode(_learned(examples[1])) == "9" * 256
    assert encode_batch(tokenizer, rows, "m", None, 512) == (examples, statuses)
