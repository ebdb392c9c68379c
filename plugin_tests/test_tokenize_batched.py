"""The batched tokenizer (``encode_table``: one tokenizer call per column, labels on
arrays, Arrow batches) gives the tokens, labels and truncation of the one-example
reference path (``encode_batch_reference``) for every row format."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers.hf import data


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


#: Pairs of many lengths: with max_length 12 some fit, some lose the start of the prompt,
#: some (long completions) lose their end.
PAIRS = [{"x": f"{i}+{i % 7}=" * (1 + i % 5), "y": str(i) * (1 + i % 9)} for i in range(60)]
#: Two conversations as test_chat_rows writes them, one with two assistant turns.
CONVERSATIONS = [
    {"m": [{"role": "user", "content": x}, {"role": "assistant", "content": y}]} for x, y in fixtures.FACTS
] + [
    {
        "m": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "5+1=" * 5},
            {"role": "assistant", "content": "6"},
            {"role": "user", "content": "2+2="},
            {"role": "assistant", "content": "4" * 30},
        ]
    }
]


@pytest.mark.parametrize("max_length", [None, 12, 40])
@pytest.mark.parametrize(
    "y, template, chat_format",
    [
        ("y", "{input}", False),
        ("y", "Q: {input}\nA: ", False),
        (None, "{input}", False),
        ("y", "{input}", True),
    ],
)
def test_text_rows_are_tokenized_as_one_example_at_a_time(tokenizer, y, template, chat_format, max_length):
    expected = data.encode_batch_reference(tokenizer, PAIRS, "x", y, max_length, template, chat_format)
    assert data.encode_batch(tokenizer, PAIRS, "x", y, max_length, template, chat_format) == expected
    if max_length == 12:  # the truncation rules were exercised
        assert {"prompt_cut", "end_lost"} & set(expected[1])


#: A template of the tokenizer's own (as test_chat_rows), besides ChatML.
SHORT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.mark.parametrize("max_length", [None, 20, 60])
@pytest.mark.parametrize("template", [None, SHORT_TEMPLATE])
def test_conversations_are_tokenized_as_one_example_at_a_time(tokenizer, template, max_length):
    tokenizer.chat_template = template  # None: ChatML
    try:
        expected = data.encode_batch_reference(tokenizer, CONVERSATIONS, "m", None, max_length)
        assert data.encode_batch(tokenizer, CONVERSATIONS, "m", None, max_length) == expected
    finally:
        tokenizer.chat_template = None


def test_mixed_rows_keep_their_order(tokenizer):
    rows = [{"m": "5+1=6"}, CONVERSATIONS[0], {"m": "2+2=4"}, CONVERSATIONS[-1]]
    expected = data.encode_batch_reference(tokenizer, rows, "m", None, 30)
    assert data.encode_batch(tokenizer, rows, "m", None, 30) == expected


def test_an_empty_page_and_the_cached_dataset(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    assert data.encode_batch(tokenizer, [], "x", "y", 12) == ([], [])
    ds = data.build_dataset(tokenizer, PAIRS, "x", "y", 12)
    expected, _ = data.encode_batch_reference(tokenizer, PAIRS, "x", "y", 12)
    assert ds.to_list() == expected
    assert data.build_dataset(tokenizer, PAIRS, "x", "y", 12).cache_files == ds.cache_files  # reused
