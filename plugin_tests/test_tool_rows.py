"""Tool-call rows: conversations with a column of tools (function schemas) train through
the chat template given the tools, learning the assistant turns (the calls included), and
``predict`` takes tools the same way."""

from __future__ import annotations

import re

import pytest

from plugin_tests import fixtures
from plugin_tests.test_chat_rows import _labeled_spans, with_template
from superduper_transformers.hf import data

#: A short template of the tokenizer's own that renders tools and tool calls (as real
#: templates do, more briefly: the tiny model reads one token per character); "|" ends a turn.
TOOL_TEMPLATE = (
    "{% if tools %}[tools]{% for t in tools %}{{ t['function']['name'] }};{% endfor %}{% endif %}"
    "{% for m in messages %}[{{ m['role'] }}]"
    "{% if m.get('tool_calls') %}{% for c in m['tool_calls'] %}{{ c['function']['name'] }}("
    "{{ c['function']['arguments'].values() | join(',') }}){% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}|{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def _call(a, b):
    return {
        "role": "assistant",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": a, "b": b}}}],
    }


def _with_tool(a, b):
    """The user asks, the assistant calls ``add``, the tool answers, the assistant replies."""
    return [
        {"role": "user", "content": f"{a}+{b}="},
        _call(a, b),
        {"role": "tool", "name": "add", "content": str(a + b)},
        {"role": "assistant", "content": str(a + b)},
    ]


@pytest.fixture
def tool_model_dir(tiny_model_dir, tmp_path):
    """The tiny model, its tokenizer given :data:`TOOL_TEMPLATE`."""
    return with_template(tiny_model_dir, str(tmp_path / "tool-model"), TOOL_TEMPLATE)


def test_labels_cover_the_assistant_turns_and_the_call(tool_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tool_model_dir)
    row = {"messages": _with_tool(5, 1), "tools": [ADD]}
    example = data.tokenize(tokenizer, row, "messages", "tools")

    text = "[tools]add;[user]5+1=|[assistant]add(5,1)|[tool]6|[assistant]6|"
    assert example["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    learned = [tokenizer.decode(example["input_ids"][s:e]) for s, e in _labeled_spans(example["labels"])]
    assert learned == ["add(5,1)|", "6|</s>"]  # the call and the reply; not the tool's result
    # the batched path gives the same tokens and labels
    rows = [row, {"messages": _with_tool(2, 3), "tools": [ADD]}]
    assert data.encode_batch(tokenizer, rows, "messages", "tools", None)[0][0] == example
    # what predict feeds the model: the tools rendered before the conversation
    prompt = data.build_prompt(tokenizer, _with_tool(5, 1)[:1], tools=[ADD])
    assert prompt == "[tools]add;[user]5+1=|[assistant]"


BAD = [
    ({"messages": _with_tool(5, 1), "tools": "add"}, r"`tools` holds text, not a list of function schemas"),
    (
        {"messages": _with_tool(5, 1), "tools": [{"description": "x"}]},
        r"has tool 0 .* without a function `name`",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "1+1="},
                {"role": "assistant", "tool_calls": [{"name": "add"}]},
            ],
            "tools": [ADD],
        },
        r"message 1 whose tool call 0 .* has no `function` with a `name`",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "1+1=", "tool_calls": []},
                {"role": "assistant", "content": "2"},
            ],
            "tools": [],
        },
        r"message 0 with `tool_calls` and role 'user'",
    ),
    ({"messages": _with_tool(5, 1)}, r"Key `tools` \(the tools\) is missing from row 1"),
]


@pytest.mark.parametrize("row,match", BAD, ids=["not-a-list", "no-name", "bad-call", "user-call", "missing"])
def test_bad_tool_rows_are_refused_naming_the_row(row, match):
    good = {"messages": _with_tool(1, 1), "tools": [ADD]}
    with pytest.raises(data.DataError, match=match):
        data.check_rows([good, row], "messages", "tools", "training rows")


def test_training_on_tool_rows_learns_to_call_the_tool(db, tool_model_dir):
    from superduper import Table

    db.apply(Table("calls", fields={"messages": "json", "tools": "json", "_fold": "str"}), force=True)
    facts = [(a, 1) for a in range(8)]
    # Given the tool, the model calls it; without, it answers: it must read the tools.
    rows = [{"messages": _with_tool(a, b)[:2], "tools": [ADD], "_fold": "train"} for a, b in facts]
    rows += [
        {"messages": _with_tool(a, b)[:1] + _with_tool(a, b)[3:], "tools": [], "_fold": "train"}
        for a, b in facts
    ]
    db["calls"].insert(rows)
    # 100 steps: 8/8 calls well formed and 7/8 with the right arguments, 6/8 replies right.
    llm = fixtures.make_llm(
        db,
        tool_model_dir,
        "caller",
        table="calls",
        key=("messages", "tools"),
        max_steps=100,
        save_steps=100,
        eval_strategy="no",
    )
    llm.predict_kwargs = {"max_new_tokens": 10}
    db.apply(llm, force=True)

    llm = db.load("LLM", "caller")
    questions = [[{"role": "user", "content": f"{a}+{b}="}] for a, b in facts]
    calls = [c.strip() for c in llm.predict_batches(questions, tools=[ADD])]
    replies = [r.strip() for r in llm.predict_batches(questions)]
    assert all(re.fullmatch(r"add\(\d,\d\)", c) for c in calls), calls
    assert sum(c == f"add({a},{b})" for c, (a, b) in zip(calls, facts)) >= 5, calls
    assert not any(r.startswith("add") for r in replies), replies
    assert sum(r == str(a + b) for r, (a, b) in zip(replies, facts)) >= 4, replies
    assert llm.predict(questions[0], tools=[ADD]).strip() == calls[0]
