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


#: A template that ends each reply with the EOS token itself (no EOS appended after it).
EOS_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% if m['role'] == 'assistant' %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
)
#: Contents ChatML must write verbatim: its own markers, Jinja syntax, newlines, nothing;
#: a conversation that ends with a user turn; a reply past the limit; repeated texts.
TRICKY = [
    {"m": [{"role": "user", "content": "<|im_end|>\n{{ 1 }}{% if %}"}, {"role": "assistant", "content": ""}]},
    {"m": [{"role": "user", "content": "é\n\n  "}, {"role": "assistant", "content": " 7\n"}]},
    {
        "m": [
            {"role": "user", "content": "1+1="},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "and?"},
        ]
    },
    {"m": [{"role": "tool", "content": "{}"}, {"role": "assistant", "content": "ok"}]},
    {
        "m": [{"role": "user", "content": "7" * 70}, {"role": "assistant", "content": "8" * 12}]
    },  # cut on the left
] * 2


@pytest.mark.parametrize("max_length", [None, 20, 60])
@pytest.mark.parametrize("template", [None, SHORT_TEMPLATE, EOS_TEMPLATE])
def test_conversations_are_tokenized_as_one_example_at_a_time(tokenizer, template, max_length, monkeypatch):
    rendered = []  # conversations the batched path renders through the template (not ChatML in Python)
    render_replies = data._render_replies
    tokenizer.chat_template = template  # None: ChatML
    try:
        rows = CONVERSATIONS + TRICKY
        expected = data.encode_batch_reference(tokenizer, rows, "m", None, max_length)
        monkeypatch.setattr(data, "_render_replies", lambda *a: rendered.append(a) or render_replies(*a))
        assert data.encode_batch(tokenizer, rows, "m", None, max_length) == expected
    finally:
        tokenizer.chat_template = None
    # ChatML is written in Python; another template renders each conversation itself.
    assert len(rendered) == (0 if template is None else len(rows))


def test_chatml_rows_it_cannot_write_go_through_the_template(tokenizer, monkeypatch):
    rendered = []
    render_replies = data._render_replies
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    rows = [
        {"m": CONVERSATIONS[0]["m"], "t": [tool]},  # tools: the template renders them
        {
            "m": [
                {"role": "user", "content": "1+1="},
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ],
            "t": None,
        },
        {"m": CONVERSATIONS[1]["m"], "t": None},  # plain: ChatML in Python
    ]
    expected = data.encode_batch_reference(tokenizer, rows, "m", "t", 40)
    monkeypatch.setattr(data, "_render_replies", lambda *a: rendered.append(a) or render_replies(*a))
    assert data.encode_batch(tokenizer, rows, "m", "t", 40) == expected
    assert [a[1] for a in rendered] == [rows[0]["m"], rows[1]["m"]]


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


def test_worker_processes_write_the_same_dataset(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(data, "BATCH_SIZE", 7)  # many pages, handed out to the workers
    rows = PAIRS + [{"x": r["m"], "y": None} for r in CONVERSATIONS + TRICKY]
    expected, _ = data.encode_batch_reference(tokenizer, rows, "x", None, 12)
    one = data.build_dataset(tokenizer, rows, "x", None, 12, fingerprint="one")
    two = data.build_dataset(tokenizer, rows, "x", None, 12, fingerprint="two", processes=2)
    assert two.to_list() == one.to_list() == expected
    with open(one.cache_files[0]["filename"], "rb") as a, open(two.cache_files[0]["filename"], "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_number_of_processes_is_refused_before_anything_is_written(
    tokenizer, tmp_path, monkeypatch, value
):
    from superduper_transformers.hf import workers

    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv(workers.PROCESSES_ENV, value)
    with pytest.raises(ValueError, match=f"{workers.PROCESSES_ENV} is '{value}': give a number of processes"):
        data.build_dataset(tokenizer, PAIRS, "x", "y", 12)
    assert not list(tmp_path.rglob("*.arrow"))
    monkeypatch.setenv(workers.PROCESSES_ENV, "auto")
    assert workers.processes_setting() == workers.available_cores()


def test_a_template_that_renders_prefixes_otherwise_is_refused_naming_the_turn(tokenizer):
    """Reply spans are found as rendered prefixes: a template whose start depends on what
    follows (here the message count) cannot be used, on either path."""
    from superduper_transformers.hf.data import DataError

    tokenizer.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }};{% endfor %}"
    try:
        for encode in (data.encode_batch_reference, data.encode_batch):
            with pytest.raises(DataError, match=r"message 1, an assistant turn.*\(e\.g\. ChatML\)"):
                encode(tokenizer, [CONVERSATIONS[0]], "m", None, 40)
    finally:
        tokenizer.chat_template = None
