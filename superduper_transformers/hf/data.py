"""Rows from the datalayer -> tokenized ``datasets.Dataset`` for causal-LM training.

Tokenization happens here, not inside trl, so that the labels are exactly what
:func:`tokenize` says: with an output key ``y`` the prompt tokens are masked
(-100) and only the completion (plus EOS) is learned; without ``y`` the whole text
is learned. The prompt is tokenized on its own, as at prediction time, so the
model sees the same token boundary when it generates.

A row whose value is a list of messages (``[{"role": "user", "content": ...},
{"role": "assistant", ...}]``, a *conversation*) is rendered with the tokenizer's chat
template (ChatML when it has none) and only the assistant turns are learned. With a
second column of *tools* (function schemas, ``key=("messages", "tools")``) the template
renders them too, and assistant turns may call them (``tool_calls``, learned like any
reply) and ``tool`` messages return their results (not learned).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import typing as t

import numpy as np
from superduper import logging

# The cache's folder and bookkeeping live in `data_cache` (also used by the command line).
from superduper_transformers._private import private_dir
from superduper_transformers.data_cache import _BUILDER, CACHE_ENV, data_cache_dir, mark_complete  # noqa: F401
from superduper_transformers.hf import chatml, tokens, workers

IGNORE_INDEX = -100


class DataError(ValueError):
    """The training rows cannot be used; the message names the key, the row and the fix."""


#: ChatML, used by ``setup_chat_format`` when the tokenizer has no chat template of its own.
CHATML_TEMPLATE = chatml.TEMPLATE


#: The roles a message of a conversation may have (``tool``: a tool call's result).
CHAT_ROLES = ("system", "user", "assistant", "tool")
_EXAMPLE_MESSAGES = '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'


def is_conversation(value: t.Any) -> bool:
    """Whether ``value`` is a conversation (a list of messages) rather than text."""
    return isinstance(value, (list, tuple))


def conversation_issue(value: t.Any, need_assistant: bool = True) -> t.Optional[str]:
    """What is wrong with ``value`` as a conversation, or None when it is one.

    :param value: The value of a row (or a prompt given to ``predict``).
    :param need_assistant: Training needs an assistant turn to learn; a prompt does not.
    """
    if not is_conversation(value):
        return f"is a {type(value).__name__} ({value!r:.60}), not a list of messages"
    if not value:
        return "is an empty list of messages"
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            return f"has message {i} that is a {type(m).__name__} ({m!r:.60}), not a dict"
        calls = m.get("tool_calls")
        needed = ("role",) if calls and m.get("role") == "assistant" else ("role", "content")
        missing = [k for k in needed if k not in m]
        if missing:
            return f"has message {i} without {' and '.join(f'`{k}`' for k in missing)} ({m!r:.80})"
        if m["role"] not in CHAT_ROLES:
            return f"has message {i} with role {m['role']!r}, not one of {CHAT_ROLES}"
        if not isinstance(m.get("content"), str) and not (calls and m.get("content") is None):
            return f"has message {i} whose `content` is a {type(m['content']).__name__}, not text (str)"
        issue = _tool_calls_issue(m) if "tool_calls" in m else None
        if issue:
            return f"has message {i} {issue}"
    if need_assistant and not any(m["role"] == "assistant" for m in value):
        return "has no assistant message: there is nothing to learn"
    return None


_EXAMPLE_CALL = '{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {...}}}]}'
_EXAMPLE_TOOL = '{"type": "function", "function": {"name": "f", "description": "...", "parameters": {...}}}'


def _tool_calls_issue(message: t.Mapping) -> t.Optional[str]:
    """What is wrong with a message's ``tool_calls`` (transformers' chat format), or None."""
    calls = message["tool_calls"]
    if message["role"] != "assistant":
        return f"with `tool_calls` and role {message['role']!r}: only an assistant calls tools"
    if not isinstance(calls, (list, tuple)) or not calls:
        return f"whose `tool_calls` is {calls!r:.60}, not a non-empty list of calls such as {_EXAMPLE_CALL}"
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return (
                f"whose tool call {j} ({call!r:.60}) has no `function` with a `name`, as in {_EXAMPLE_CALL}"
            )
        if not isinstance(function.get("arguments", {}), (dict, str)):
            return f"whose tool call {j} has `arguments` that are neither a dict nor JSON text"
    return None


def tools_issue(value: t.Any) -> t.Optional[str]:
    """What is wrong with ``value`` as the tools of a conversation (function schemas), or
    None when it is a list of them (or empty: a row without tools)."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return f"is a {type(value).__name__} ({value!r:.60}), not a list of function schemas"
    for j, tool in enumerate(value):
        schema = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            return (
                f"has tool {j} ({tool!r:.60}) without a function `name`: give schemas such as {_EXAMPLE_TOOL}"
            )
    return None


def render_chat(
    tokenizer,
    messages: t.Sequence[t.Mapping],
    add_generation_prompt: bool = False,
    tools: t.Optional[t.Sequence[t.Mapping]] = None,
) -> str:
    """``messages`` as text through the tokenizer's chat template (ChatML when it has none),
    with ``tools`` (function schemas) given to the template."""
    return tokenizer.apply_chat_template(
        list(messages),
        tools=list(tools) if tools else None,
        chat_template=tokenizer.chat_template or CHATML_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def end_of_turn(tokenizer) -> str:
    """The text the chat template writes after an assistant message (``<|im_end|>`` in
    ChatML; empty for a template that writes nothing), without surrounding whitespace."""
    marker = "\x00reply\x00"
    text = render_chat(
        tokenizer, [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
    )
    return text.split(marker, 1)[-1].strip() if marker in text else ""


def chat_reply(tokenizer, generated: str) -> str:
    """The assistant's reply in text generated after a conversation: up to the end of its
    turn. With ChatML as plain text (no special token) the model writes ``<|im_end|>``
    itself, and whatever follows it is not the reply."""
    marker = end_of_turn(tokenizer)
    return generated.split(marker, 1)[0] if marker else generated


def format_prompt(template: str, value: str) -> str:
    """Fill the LLM's ``prompt_template`` with one input value."""
    return template.format(input=value) if template else value


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as the user turn of a chat, ending where the assistant's answer starts.

    Uses the tokenizer's own chat template, else ChatML (as plain text: no tokens are
    added to the vocabulary, so the embeddings keep their size).
    """
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        chat_template=tokenizer.chat_template or CHATML_TEMPLATE,
        add_generation_prompt=True,
        tokenize=False,
    )


def build_prompt(
    tokenizer,
    value: t.Any,
    prompt_template: str = "{input}",
    chat_format: bool = False,
    tools: t.Optional[t.Sequence[t.Mapping]] = None,
) -> str:
    """The exact prompt text the model sees, in training and at prediction time.

    A conversation (list of messages) is rendered with the chat template, ``tools`` and
    the assistant's generation prompt; ``prompt_template`` applies to text only.
    """
    issue = tools_issue(tools)
    if issue:
        raise DataError(f"`tools` {issue}.")
    if is_conversation(value):
        issue = conversation_issue(value, need_assistant=False)
        if issue:
            raise DataError(
                f"The prompt {issue}. Give text, or a list of messages such as {_EXAMPLE_MESSAGES}."
            )
        return render_chat(tokenizer, value, add_generation_prompt=True, tools=tools)
    if tools:
        raise DataError(
            "`tools` are rendered by the chat template, and the prompt is text: give the prompt "
            f"as a list of messages such as {_EXAMPLE_MESSAGES}."
        )
    prompt = format_prompt(prompt_template, value)
    return chat_prompt(tokenizer, prompt) if chat_format else prompt


def tokenize(
    tokenizer,
    example: t.Dict[str, t.Any],
    X: str,
    y: t.Optional[str] = None,
    max_length: t.Optional[int] = None,
    prompt_template: str = "{input}",
    chat_format: bool = False,
) -> t.Dict[str, t.List[int]]:
    """Tokenize one example into ``input_ids``, ``attention_mask`` and ``labels``.

    :param tokenizer: A Hugging Face tokenizer.
    :param example: One row, a mapping from column name to text.
    :param X: The input (prompt) column.
    :param y: The output (completion) column. When given, the prompt tokens get label
        -100 so only the completion is learned; when None the whole text is learned. With
        a conversation under ``X``: the column of its tools (function schemas), or None.
    :param max_length: At most this many tokens. A longer example loses the start of its
        prompt, so the completion and its EOS are kept whole; a completion (or whole
        text) that alone is longer is cut at the end, after at most the last
        ``max_length // 2`` tokens of its prompt (so it always keeps part of the
        completion). A conversation keeps its start unless its first reply starts past
        ``max_length // 2`` (:func:`.tokens.conversation_window`).
    :param prompt_template: Template with ``{input}`` applied to the input, as the
        ``LLM`` does at prediction time.
    :param chat_format: Wrap the prompt as the user turn of the tokenizer's chat template
        (``LLMTrainer(setup_chat_format=True)``); the completion is the assistant's answer.
    """
    return _encode(tokenizer, example, X, y, max_length, prompt_template, chat_format)[0]


#: What happened to an example longer than ``max_length``.
FITS, PROMPT_CUT, END_LOST = "fits", "prompt_cut", "end_lost"


def _encode(tokenizer, example, X, y, max_length, prompt_template, chat_format):
    """:func:`tokenize`, and ``FITS``, ``PROMPT_CUT`` or ``END_LOST``: the reference path,
    one example at a time in Python lists (:func:`encode_table` must give the same)."""
    examples, statuses = encode_batch_reference(
        tokenizer, [example], X, y, max_length, prompt_template, chat_format
    )
    return examples[0], statuses[0]


def _encode_conversation(tokenizer, messages, max_length, tools=None):
    """A conversation tokenized once; labels only on the assistant turns.

    The span of assistant message ``i`` runs from the end of the conversation before it
    plus the generation prompt (what ``predict`` feeds the model) to the end of the
    conversation up to it, so it holds the reply and whatever the template closes the
    turn with (``<|im_end|>``). Spans are token counts of rendered prefixes: the template
    must render each prefix of a conversation as a prefix of the whole.
    """
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    text, prefixes = _render_replies(tokenizer, messages, tools)
    input_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    labels = [IGNORE_INDEX] * len(input_ids)
    span = (0, 0)
    for before, upto in prefixes:
        span = (count(before), count(upto))
        labels[span[0] : span[1]] = input_ids[span[0] : span[1]]
    eos = tokenizer.eos_token_id
    if messages[-1]["role"] == "assistant" and eos is not None and eos not in input_ids[span[0] : span[1]]:
        # A template that writes no end-of-turn token: EOS teaches the model to stop.
        input_ids, labels = input_ids + [eos], labels + [eos]
    start, end, code = tokens.conversation_window(labels, max_length)
    input_ids, labels = input_ids[start:end], labels[start:end]
    status = {c: name for name, c in _STATUS_CODES.items()}[code]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}, status


def check_rows(rows: t.Sequence[t.Mapping], X: str, y: t.Optional[str], where: str, start: int = 0) -> None:
    """Check that rows carry text under the keys; raise a ``DataError`` otherwise.

    :param rows: Rows (mappings) as returned by the select query.
    :param X: Input column.
    :param y: Output column or None.
    :param where: Human description of the rows (e.g. ``"training rows of 'docs'"``).
    :param start: The number of the first row (a page of a longer read).
    """
    if not rows:
        raise DataError(
            f"The {where} are empty: the trainer's `select` returned no rows. Insert rows "
            "with `_fold='train'` (and `_fold='valid'` for evaluation) before applying the model."
        )
    keys = [k for k in (X, y) if k is not None]
    if any(k in row and is_conversation(row[k]) for row in rows for k in keys):
        _check_conversations(rows, X, y, where, start)
        return
    for i, row in enumerate(rows, start):
        for k in keys:
            if k not in row:
                raise DataError(
                    f"Key `{k}` is missing from row {i} of the {where}; the row has "
                    f"keys {sorted(c for c in row if not c.startswith('_'))}. Fix the trainer's "
                    "`key` or the rows."
                )
            if not isinstance(row[k], str):
                raise DataError(
                    f"Key `{k}` of row {i} of the {where} holds a {type(row[k]).__name__} "
                    f"({row[k]!r:.60}); the LLM trainer needs text (str), or a list of messages "
                    f"such as {_EXAMPLE_MESSAGES} under a single `key`. Convert the column "
                    "before training."
                )


def _check_conversations(
    rows: t.Sequence[t.Mapping], X: str, y: t.Optional[str], where: str, start: int = 0
) -> None:
    """Rows holding conversations: one column of lists of messages, each well formed, and
    optionally a second column of the tools they may call."""
    if y is not None and any(isinstance(row.get(y), str) for row in rows):
        raise DataError(
            f"The {where} hold lists of messages, which train with a single `key` (the column of "
            f"the conversations), but the trainer's `key` is a pair ({X!r}, {y!r}). Set "
            f"`key={X!r}` and put the answers in the conversations as assistant messages (a second "
            f"column holds the tools the conversations may call: `{y}` holds text, not a list of "
            "function schemas)."
        )
    checks = [
        (
            X,
            "",
            conversation_issue,
            f"A conversation is a list of messages, each with a `role` in {CHAT_ROLES} and a text "
            f"`content`, and at least one assistant message (what is learned), e.g. {_EXAMPLE_MESSAGES}.",
        )
    ]
    if y is not None:
        hint = "The second column of conversation rows holds the tools they may call (a list of function schemas, or empty)."
        checks.append((y, " (the tools)", tools_issue, hint))
    for i, row in enumerate(rows, start):
        for column, what, issue_of, hint in checks:
            if column not in row:
                raise _missing(f"`{column}`{what}", i, where, row)
            issue = issue_of(row[column])
            if issue:
                raise DataError(f"Key `{column}` of row {i} of the {where} {issue}. {hint} Fix the row.")


def _missing(key: str, i: int, where: str, row: t.Mapping) -> DataError:
    """The error of a row without a column of the trainer's ``key``."""
    return DataError(
        f"Key {key} is missing from row {i} of the {where}; the row has keys "
        f"{sorted(c for c in row if not c.startswith('_'))}. Fix the trainer's `key` or the rows."
    )


def encode_batch(
    tokenizer,
    rows: t.Sequence[t.Mapping],
    X: str,
    y: t.Optional[str],
    max_length: t.Optional[int],
    prompt_template: str = "{input}",
    chat_format: bool = False,
) -> t.Tuple[t.List[t.Dict[str, t.List[int]]], t.List[str]]:
    """:func:`encode_table` as Python lists: the examples and, for each, ``FITS``,
    ``PROMPT_CUT`` or ``END_LOST``."""
    table = encode_table(tokenizer, rows, X, y, max_length, prompt_template, chat_format)
    names = {code: name for name, code in _STATUS_CODES.items()}
    statuses = [names[c] for c in table.column(STATUS_COLUMN).to_pylist()]
    return table.drop_columns([STATUS_COLUMN]).to_pylist(), statuses


def encode_table(
    tokenizer,
    rows: t.Sequence[t.Mapping],
    X: str,
    y: t.Optional[str],
    max_length: t.Optional[int],
    prompt_template: str = "{input}",
    chat_format: bool = False,
):
    """:func:`tokenize` of a batch of rows, as a ``pyarrow.Table`` of ``input_ids``,
    ``attention_mask``, ``labels`` and the truncation code (``_truncation``).

    One call of the tokenizer per column of the batch (prompts, then completions) and
    the labels built on flat arrays (:mod:`.tokens`); conversations are rendered one by
    one (the chat template is Python) but tokenized together. The tokens and labels
    are those of :func:`encode_batch_reference`, row for row.
    """
    import pyarrow as pa

    # One cheap pass for the common page of text only; conversations are sorted out row by row.
    maybe_conv = any(isinstance(row[X], (list, tuple)) for row in rows)
    conv = [i for i, row in enumerate(rows) if _is_chat_row(row, X, y)] if maybe_conv else []
    if not conv:
        return _text_table(tokenizer, rows, X, y, max_length, prompt_template, chat_format)
    if len(conv) == len(rows):
        return _conversation_table(tokenizer, rows, X, y, max_length)
    conv_set = set(conv)
    text = [i for i in range(len(rows)) if i not in conv_set]
    parts = [
        _text_table(tokenizer, [rows[i] for i in text], X, y, max_length, prompt_template, chat_format),
        _conversation_table(tokenizer, [rows[i] for i in conv], X, y, max_length),
    ]
    order = np.argsort(np.array(text + conv))
    return pa.concat_tables(parts).take(order)


def _ids(tokenizer, texts, add_special_tokens):
    """``(offsets, ids)`` of ``texts`` (see :mod:`.tokens`), in one tokenizer call."""
    if not texts:  # the tokenizer refuses an empty batch
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    index: t.Dict[str, int] = {}
    at = [index.setdefault(text, len(index)) for text in texts]
    if len(index) == len(texts):
        return tokens.flatten(_token_lists(tokenizer, texts, add_special_tokens))
    # Repeated texts (a page's few distinct answers, a shared system prompt) are tokenized once.
    return tokens.gather(tokens.flatten(_token_lists(tokenizer, list(index), add_special_tokens)), at)


def _token_lists(tokenizer, texts, add_special_tokens):
    """The token ids of each text, as ``tokenizer(texts)["input_ids"]``.

    A fast tokenizer's Rust backend is called directly: transformers' wrapper spends
    ~5x the tokenizing time building its ``BatchEncoding``. The wrapper's result for the
    first text is compared, so a tokenizer whose wrapper does more than its backend (or
    a backend set to truncate or pad) is tokenized through the wrapper instead.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        lists = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
        if lists[0] == tokenizer(texts[0], add_special_tokens=add_special_tokens)["input_ids"]:
            return lists
    return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]


def _text_table(tokenizer, rows, X, y, max_length, prompt_template, chat_format):
    prompts = _prompts(tokenizer, [row[X] for row in rows], prompt_template, chat_format)
    prompt_ids = _ids(tokenizer, prompts, add_special_tokens=not chat_format)
    if y is None:  # the whole text is learned: it goes where a completion would
        empty = (np.zeros(len(rows) + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))
        prompt_ids, completion_ids = empty, prompt_ids
    else:
        texts = [row[y] for row in rows]
        completion_ids = _ids(tokenizer, texts, add_special_tokens=False)
    completion_ids = tokens.append_token(*completion_ids, tokenizer.eos_token_id)
    return _table(*tokens.assemble(prompt_ids, completion_ids, max_length, learn_prompt=y is None))


def _prompts(tokenizer, values, prompt_template, chat_format):
    """:func:`build_prompt` of each value; plain text with a plain template is formatted
    here, without the per-row checks for conversations and tools."""
    if chat_format or not all(type(v) is str for v in values):  # noqa: E721 (exactly text)
        return [build_prompt(tokenizer, v, prompt_template, chat_format) for v in values]
    if not prompt_template or prompt_template == "{input}":
        return values
    return [prompt_template.format(input=v) for v in values]


def _is_chat_row(row, X, y) -> bool:
    """A conversation (its tools in ``y``, if any), not text: validated by :func:`check_rows`."""
    return is_conversation(row[X]) and (y is None or not isinstance(row.get(y), str))


def _conversation_table(tokenizer, rows, X, y, max_length):
    """Conversations (column ``X``, tools in ``y``) as :func:`_encode_conversation` tokenizes
    them: each distinct text tokenized once, in one tokenizer call, labels on flat arrays.

    With the ChatML fallback template a plain conversation is rendered once, in Python
    (:func:`.chatml.render`), and its replies' prefixes are slices of that text; any other
    template renders the conversation and each reply's two prefixes, as the reference does.
    """
    chatml_template = (tokenizer.chat_template or CHATML_TEMPLATE) == CHATML_TEMPLATE
    index: t.Dict[str, int] = {}
    whole, reply_rows, before, upto, ends_with_reply = [], [], [], [], []
    for r, row in enumerate(rows):
        messages, row_tools = row[X], (row[y] if y is not None else None)
        rendered = chatml.render(messages) if chatml_template and not row_tools else None
        if rendered is None:
            text, prefixes = _render_replies(tokenizer, messages, row_tools)
        else:
            text, prefixes = rendered[0], [(rendered[0][:b], rendered[0][:u]) for b, u in rendered[1]]
        whole.append(index.setdefault(text, len(index)))
        for b, u in prefixes:
            reply_rows.append(r)
            before.append(index.setdefault(b, len(index)))
            upto.append(index.setdefault(u, len(index)))
        ends_with_reply.append(messages[-1]["role"] == "assistant")
    unique = _ids(tokenizer, list(index), add_special_tokens=False)
    lengths = np.diff(unique[0])
    replies = (
        np.array(reply_rows, dtype=np.int64),
        lengths[np.array(before, dtype=np.int64)],
        lengths[np.array(upto, dtype=np.int64)],
    )
    encoded = tokens.conversations(
        tokens.gather(unique, whole), replies, np.array(ends_with_reply), tokenizer.eos_token_id, max_length
    )
    return _table(*encoded)


def _render_replies(tokenizer, messages, tools=None):
    """The conversation through its chat template, and for each assistant message the
    conversation before it (with the generation prompt) and up to it.

    :raises DataError: when a prefix is not rendered as the start of the whole.
    """
    text = render_chat(tokenizer, messages, tools=tools)
    prefixes = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(tokenizer, messages[:i], add_generation_prompt=True, tools=tools)
        upto = render_chat(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(before) and text.startswith(upto)):
            raise DataError(
                "The chat template does not render the start of a conversation as the start of "
                f"the whole (message {i}, an assistant turn), so its tokens cannot be found. Use a "
                "template that renders every turn the same whatever follows it (e.g. ChatML)."
            )
        prefixes.append((before, upto))
    return text, prefixes


def _table(offsets, input_ids, labels, status):
    """A batch of examples from flat arrays (see :mod:`.tokens`), in the cached schema."""
    import pyarrow as pa

    offsets = pa.array(offsets.astype(np.int32))
    columns = [
        pa.ListArray.from_arrays(offsets, pa.array(input_ids)),
        pa.ListArray.from_arrays(offsets, pa.array(np.ones(len(input_ids), dtype=np.int8))),
        pa.ListArray.from_arrays(offsets, pa.array(labels)),
        pa.array(status),
    ]
    return pa.Table.from_arrays(columns, schema=_features().arrow_schema)


def encode_batch_reference(
    tokenizer,
    rows: t.Sequence[t.Mapping],
    X: str,
    y: t.Optional[str],
    max_length: t.Optional[int],
    prompt_template: str = "{input}",
    chat_format: bool = False,
) -> t.Tuple[t.List[t.Dict[str, t.List[int]]], t.List[str]]:
    """:func:`tokenize` of many rows, one example at a time in Python lists: the
    reference that :func:`encode_table` is tested against (and the benchmark's baseline).

    :return: the examples and, for each, ``FITS``, ``PROMPT_CUT`` or ``END_LOST``.
    """
    out: t.List[t.Any] = [None] * len(rows)
    text = []
    for i, row in enumerate(rows):
        if _is_chat_row(row, X, y):
            out[i] = _encode_conversation(tokenizer, row[X], max_length, row[y] if y is not None else None)
        else:
            text.append(i)
    if text:
        prompts = [build_prompt(tokenizer, rows[i][X], prompt_template, chat_format) for i in text]
        prompt_ids = tokenizer(prompts, add_special_tokens=not chat_format)["input_ids"]
        completions = [None] * len(text)
        if y is not None:
            completions = tokenizer([rows[i][y] for i in text], add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        for i, p_ids, c_ids in zip(text, prompt_ids, completions):
            out[i] = _combine(p_ids, None if y is None else c_ids + eos, eos, max_length)
    return [e for e, _ in out], [s for _, s in out]


def _combine(prompt_ids, completion_ids, eos, max_length):
    """Prompt and completion tokens -> example and truncation status (see :func:`tokenize`)."""
    if completion_ids is None:
        input_ids = prompt_ids + eos
        labels = list(input_ids)
    else:
        input_ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    status = FITS
    if max_length is not None and len(input_ids) > max_length:
        status = END_LOST
        if completion_ids is not None and len(completion_ids) < max_length:
            status = PROMPT_CUT
            # Too long: drop the *start* of the prompt, so the completion (what is learned)
            # and its EOS survive; cutting the end would leave nothing to learn.
            cut = len(input_ids) - max_length
            input_ids, labels = input_ids[cut:], labels[cut:]
        else:
            # The completion alone is too long: it keeps its start, after at most the last
            # half of the window of the prompt (a prompt longer than the window would
            # otherwise leave no completion token, nothing to learn).
            cut = max(0, len(prompt_ids) - max_length // 2) if completion_ids is not None else 0
            input_ids, labels = input_ids[cut : cut + max_length], labels[cut : cut + max_length]
    encoded = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
    return encoded, status


#: Bump when the tokenized output of the same rows and settings changes (cache key).
TOKENIZATION_VERSION = 3  # 2: written by `encode_table`; 3: over-long rows keep part of each completion
#: The truncation status of each example, kept in the cached dataset so the warning
#: is the same on a cache hit (dropped before training).
STATUS_COLUMN = "_truncation"
_STATUS_CODES = {FITS: 0, PROMPT_CUT: 1, END_LOST: 2}
#: Rows tokenized per batch when the rows come as a plain iterable.
BATCH_SIZE = 1000


def tokenizer_hash(tokenizer) -> str:
    """A hash of what decides a tokenizer's output: vocabulary, rules, chat template, EOS."""
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:  # a slow tokenizer: hash the object the way datasets does
        from datasets.fingerprint import Hasher

        text = Hasher.hash(tokenizer)
    parts = [type(tokenizer).__name__, text, str(tokenizer.chat_template), str(tokenizer.eos_token_id)]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def tokenization_key(
    tokenizer,
    data_hash: str,
    X: str,
    y: t.Optional[str],
    max_length: t.Optional[int],
    prompt_template: str,
    chat_format: bool,
) -> str:
    """The cache key of a tokenized dataset: its rows' hash and every tokenization setting.

    :param data_hash: An order-*dependent* hash of the rows would be exact; the rows'
        content hash (``lineage``) with their count is used: the same rows in another
        order give the same cached dataset, in the order first read.
    """
    import hashlib
    import json

    settings = [TOKENIZATION_VERSION, data_hash, X, y, max_length, prompt_template, bool(chat_format)]
    text = json.dumps(settings) + tokenizer_hash(tokenizer)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def pages(rows) -> t.Iterator[t.List[t.Mapping]]:
    """Pages of rows: the rows' own pages (``FoldRows.pages``) or batches of an iterable."""
    if hasattr(rows, "pages"):
        yield from rows.pages()
        return
    if isinstance(rows, t.Sequence):
        for start in range(0, len(rows), BATCH_SIZE):
            yield rows[start : start + BATCH_SIZE]
        return
    page = []
    for row in rows:
        page.append(row)
        if len(page) == BATCH_SIZE:
            yield page
            page = []
    if page:
        yield page


def _features():
    from datasets import Features, Sequence, Value

    ids = Sequence(Value("int32"))
    return Features(
        input_ids=ids, attention_mask=Sequence(Value("int8")), labels=ids, **{STATUS_COLUMN: Value("int8")}
    )


def build_dataset(
    tokenizer,
    rows: t.Iterable[t.Mapping],
    X: str,
    y: t.Optional[str],
    max_length: t.Optional[int],
    prompt_template: str = "{input}",
    chat_format: bool = False,
    fingerprint: t.Optional[str] = None,
    cache_dir: t.Optional[str] = None,
    owner: t.Optional[str] = None,
    processes: t.Union[int, str, None] = None,
):
    """Tokenize rows into a ``datasets.Dataset`` with ``input_ids``/``attention_mask``/``labels``.

    The rows are read page by page, each page tokenized by :func:`encode_table` and
    written as Arrow record batches to one file: the dataset is memory-mapped, never one
    Python list. It is cached under ``fingerprint`` (a folder of ``cache_dir``):
    the same rows with the same tokenization settings are read from the cache, without
    reading or tokenizing the rows again.

    :param tokenizer: A Hugging Face tokenizer.
    :param rows: The rows: a list, any iterable, or ``store.rows.FoldRows`` (read in its
        pages). Read at most once.
    :param X: The input (prompt) column.
    :param y: The output (completion) column, or None.
    :param max_length: At most this many tokens (see :func:`tokenize`).
    :param prompt_template: Template with ``{input}``.
    :param chat_format: Wrap the prompt in the chat template.
    :param fingerprint: Cache key (:func:`tokenization_key`); None: computed from the
        rows' content (which reads them once more).
    :param cache_dir: The cache folder (default :func:`data_cache_dir`), made owner-only.
    :param owner: The tag of the model trained on it (its entry goes when the model is deleted).
    :param processes: Pages tokenized in this many worker processes, in order (the same
        dataset, byte for byte); ``"auto"``: one per available core. None: the environment
        variable ``SD_TRANSFORMERS_TOKENIZE_PROCESSES``, else 1 (no worker).
    """
    processes = workers.processes_setting(processes)
    if fingerprint is None:
        from superduper_transformers.lineage import RowsHash

        digest = RowsHash().update(r for page in pages(rows) for r in page)
        data_hash = f"{digest.count}:{digest.hexdigest()}"
        fingerprint = tokenization_key(tokenizer, data_hash, X, y, max_length, prompt_template, chat_format)

    def tables():
        encode = functools.partial(
            encode_table,
            tokenizer,
            X=X,
            y=y,
            max_length=max_length,
            prompt_template=prompt_template,
            chat_format=chat_format,
        )
        return workers.ordered_map(encode, pages(rows), processes)

    cache_dir = private_dir(cache_dir or data_cache_dir())  # tokens are rows: owner only
    ds = _cached_dataset(os.path.join(cache_dir, _BUILDER), fingerprint, tables)
    # The plugin's entry from now on; used now (`data-cache --clear --older-than` removes
    # what was not trained on lately).
    mark_complete(ds, owner)
    _warn_truncated(ds, max_length)
    return ds.remove_columns(STATUS_COLUMN)


def _cached_dataset(root: str, fingerprint: str, tables: t.Callable[[], t.Iterator[t.Any]]):
    """The dataset cached under ``fingerprint``, else ``tables()`` written there first.

    Each batch is written to an Arrow stream file as it comes (the dataset is then
    memory-mapped, never one Python list); the file is written under a temporary name
    and renamed, so a crash or a concurrent training never leaves half a file under the
    final name.
    """
    import pyarrow as pa
    from datasets import Dataset

    entry = os.path.join(root, f"default-fingerprint={fingerprint}")
    folder, path = os.path.join(entry, "0.0.0"), os.path.join(entry, "0.0.0", "data.arrow")
    os.makedirs(folder, exist_ok=True)
    # The lock datasets' builder takes: `data-cache --clear` leaves an entry alone while a
    # training builds or opens it, and a second training with the same rows waits for it.
    with _locked(os.path.join(entry, "0.0.0_builder.lock")):
        if not os.path.exists(path):
            fd, tmp = tempfile.mkstemp(prefix=".data-", suffix=".arrow.tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f, pa.ipc.new_stream(f, _features().arrow_schema) as writer:
                    for table in tables():
                        writer.write_table(table)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        return Dataset.from_file(path)


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive ``flock`` on ``path`` (created) for the block; none without ``fcntl``."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock, as in datasets' own fallback
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _warn_truncated(ds, max_length: t.Optional[int]) -> None:
    import pyarrow.compute as pc

    counts = {v["values"]: v["counts"] for v in pc.value_counts(ds.data.column(STATUS_COLUMN)).to_pylist()}
    cut, lost = counts.get(1, 0), counts.get(2, 0)
    if cut or lost:
        logging.warn(
            f"{cut + lost} of {len(ds)} rows are longer than "
            f"max_seq_length={max_length} tokens: {cut} had the start of "
            f"their prompt cut (the completion is kept whole), {lost} lost their "
            "end (the completion or text alone is longer, so its EOS is not learned; at most "
            "the last half of the window is prompt, so each keeps part of its completion). "
            "Raise `max_seq_length` to keep them whole."
        )


def iterable_dataset(examples: t.Callable[[], t.Iterator[t.Dict[str, t.Any]]]):
    """A ``datasets.IterableDataset`` of tokenized examples from a generator function.

    Each pass calls ``examples()`` again (one epoch). Used for rows that stream from
    Ray Data: a ``ray.data.Dataset`` or a worker's shard.
    """
    from datasets import IterableDataset

    features = _features()
    del features[STATUS_COLUMN]
    return IterableDataset.from_generator(examples, features=features)


def is_ray_dataset(value: t.Any) -> bool:
    """Whether ``value`` is a ``ray.data.Dataset`` (or a worker's shard), without importing Ray."""
    module = type(value).__module__ or ""
    return module.startswith("ray.data") and hasattr(value, "iter_rows")


def from_ray_dataset(ds, seed: int = 0):
    """A tokenized ``ray.data.Dataset`` (or shard) as a ``datasets.IterableDataset``."""

    def examples():
        for batch in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
            yield from batch.to_pylist()

    return iterable_dataset(examples)
