"""Chat rows: a column of conversations (lists of messages) trains on the assistant turns
only, through the tokenizer's chat template, and ``predict`` takes a conversation too."""

from __future__ import annotations

import shutil

import pytest

from plugin_tests import fixtures
from superduper_transformers.hf import data

#: A short template of the tokenizer's own (as in test_modes.py): ChatML puts ~40 tokens
#: between question and answer, more than the tiny random model learns to look across.
SHORT_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "5+1="},
    {"role": "assistant", "content": "6"},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4"},
]


def with_template(tiny_model_dir: str, model_dir: str, template: str) -> str:
    """A copy of the tiny model in ``model_dir``, its tokenizer given the chat ``template``."""
    from transformers import AutoTokenizer

    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(model_dir)
    return model_dir


@pytest.fixture
def chat_model_dir(tiny_model_dir, tmp_path):
    """The tiny model, its tokenizer given :data:`SHORT_TEMPLATE`."""
    return with_template(tiny_model_dir, str(tmp_path / "chat-model"), SHORT_TEMPLATE)


def _labeled_spans(labels):
    """``[(start, end), ...]`` of the runs of learned (not -100) positions."""
    spans, start = [], None
    for i, label in enumerate([*labels, data.IGNORE_INDEX]):
        if label != data.IGNORE_INDEX and start is None:
            start = i
        elif label == data.IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_labels_are_only_on_the_assistant_turns(chat_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    example = data.tokenize(tokenizer, {"messages": TWO_TURNS}, "messages")

    # The tiny tokenizer has no merges: one token per (ASCII) character, then EOS.
    text = "[system]Be brief.[user]5+1=[assistant]6[user]2+2=[assistant]4"
    assert example["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    first = len("[system]Be brief.[user]5+1=[assistant]")
    second = len("[system]Be brief.[user]5+1=[assistant]6[user]2+2=[assistant]")
    # the reply "6"; the reply "4" and the EOS that ends the conversation
    assert _labeled_spans(example["labels"]) == [(first, first + 1), (second, second + 2)]
    for start, end in _labeled_spans(example["labels"]):
        assert example["labels"][start:end] == example["input_ids"][start:end]
    assert tokenizer.decode(example["input_ids"][first : first + 1]) == "6"
    # prediction feeds exactly the tokens before the first reply
    prompt = data.build_prompt(tokenizer, TWO_TURNS[:2])
    assert prompt == text[:first]


def test_chatml_fallback_learns_the_end_of_turn(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert not tokenizer.chat_template  # the fallback CHATML_TEMPLATE is used
    example = data.tokenize(tokenizer, {"messages": TWO_TURNS[1:3]}, "messages")
    learned = [
        tokenizer.decode(example["input_ids"][s:e], skip_special_tokens=False)
        for s, e in _labeled_spans(example["labels"])
    ]
    assert learned == ["6<|im_end|>\n</s>"]
    assert data.end_of_turn(tokenizer) == "<|im_end|>"
    assert data.chat_reply(tokenizer, "6<|im_end|>\n<|im_start|>user") == "6"


BAD_ROWS = [
    ({"role": "user", "content": "5+1="}, "holds a dict|is a dict .*not a list of messages"),
    (["5+1=", "6"], "message 0 that is a str"),
    ([{"content": "5+1="}, {"role": "assistant", "content": "6"}], "message 0 without `role`"),
    ([{"role": "user"}, {"role": "assistant", "content": "6"}], "message 0 without `content`"),
    ([{"role": "user", "content": "5+1="}], "has no assistant message"),
    ([{"role": "bot", "content": "6"}], "role 'bot', not one of"),
    ([{"role": "assistant", "content": 6}], "`content` is a int"),
    ([], "empty list of messages"),
]


@pytest.mark.parametrize("value,match", BAD_ROWS, ids=[m.split()[1] for _, m in BAD_ROWS])
def test_malformed_conversations_are_refused_naming_the_row(value, match):
    good = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}
    with pytest.raises(data.DataError, match=match) as error:
        data.check_rows([good, {"messages": value}], "messages", None, "training rows")
    message = str(error.value)
    assert "`messages` of row 1 of the training rows" in message or "Key `messages` of row 1" in message
    assert "Fix the row" in message or "Convert the column" in message


def test_conversations_need_a_single_key():
    rows = [{"x": TWO_TURNS, "y": "6"}]
    with pytest.raises(data.DataError, match=r"single `key`.*Set `key='x'`"):
        data.check_rows(rows, "x", "y", "training rows")


def test_a_malformed_prompt_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(data.DataError, match="message 0 without `role`"):
        data.build_prompt(tokenizer, [{"content": "5+1="}])
    assert data.build_prompt(tokenizer, "5+1=") == "5+1="  # text is unchanged


def _conversation(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_chat_rows_are_read_from_sqlite(chat_model_dir, artifact_store, tmp_path):
    """A list-of-dicts column (`json`) round-trips through SQLite into the preflight."""
    from superduper import Table, superduper

    from superduper_transformers.trainer import preflight

    db = superduper(f"sqlite:///{tmp_path}/chats.db", force_apply=True)
    db.apply(Table("chats", fields={"messages": "json", "_fold": "str"}), force=True)
    db["chats"].insert([{"messages": _conversation(p, c), "_fold": "train"} for p, c in fixtures.FACTS[:4]])
    rows = db["chats"].select().execute()
    assert [r["messages"] for r in rows] == [_conversation(p, c) for p, c in fixtures.FACTS[:4]]
    llm = fixtures.make_llm(db, chat_model_dir, table="chats", key="messages", eval_strategy="no")
    preflight(llm, db)  # reads and checks the rows
    db["chats"].insert([{"messages": [{"role": "user", "content": "x"}], "_fold": "train"}])
    with pytest.raises(data.DataError, match="has no assistant message"):
        preflight(llm, db)


def test_training_on_chat_rows_answers_a_conversation(db, chat_model_dir):
    from superduper import Table

    from superduper_transformers.checkpoint import list_checkpoints

    db.apply(Table("chats", fields={"messages": "json", "_fold": "str"}), force=True)
    db["chats"].insert([{"messages": _conversation(p, c), "_fold": "train"} for p, c in fixtures.FACTS16])
    # 16 facts learned in 150-180 steps with setup_chat_format (test_modes.py): 2.5x that.
    llm = fixtures.make_llm(
        db,
        chat_model_dir,
        "chat",
        table="chats",
        key="messages",
        max_steps=450,
        save_steps=450,
        eval_strategy="no",
    )
    db.apply(llm, force=True)
    assert [r["step"] for r in list_checkpoints(db, "chat")] == [450]

    llm = db.load("LLM", "chat")
    replies = llm.predict_batches([[{"role": "user", "content": p}] for p, _ in fixtures.FACTS16])
    right = sum(r.strip() == c for r, (_, c) in zip(replies, fixtures.FACTS16))
    assert right >= 14, replies
    # one conversation alone is answered as in the batch
    assert (
        llm.predict([{"role": "user", "content": "5+1="}]) == replies[fixtures.FACTS16.index(("5+1=", "6"))]
    )
