"""Full fine-tuning and QLoRA (4 and 8 bits, bitsandbytes' CPU backend) through the datalayer.

Each mode memorises 16 facts (``fixtures.FACTS16``). Learning margins: each test gives
about 2.5x the steps after which its configuration answered 16 of 16 in measured learning
curves, on a CPU with native bf16 and with torch limited to AVX2 kernels in fp32
(floating-point kernels differ between CPUs, so the same seed follows another trajectory
on another machine), and asks for 14 of 16 (from 0-2 before training).
"""

from __future__ import annotations

import os

import pytest

from plugin_tests import fixtures
from superduper_transformers.checkpoint import list_checkpoints

#: Answers asked of each mode, of 16.
LEARNED = 14


def _train_and_reload(db, tiny_model_dir, identifier, table="facts16", **kwargs):
    if table == "facts16" and table not in db.show("Table"):
        fixtures.insert_rows(db, table, facts=fixtures.FACTS16, valid=fixtures.VALID16)
    llm = fixtures.make_llm(db, tiny_model_dir, identifier=identifier, table=table, **kwargs)
    db.apply(llm, force=True)
    rows = list_checkpoints(db, identifier)
    return db.load("LLM", identifier), rows


def test_full_fine_tuning_learns_and_stores_full_weights(db, tiny_model_dir):
    llm, rows = _train_and_reload(
        db,
        tiny_model_dir,
        "full",
        use_lora=False,
        max_steps=120,
        save_steps=60,
        eval_steps=60,
        learning_rate=3e-3,
    )
    assert [r["step"] for r in rows] == [60, 120]
    path = db.load("Checkpoint", rows[-1]["identifier"]).local_path
    files = set(os.listdir(path))
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert fixtures.answered(llm, fixtures.FACTS16) >= LEARNED, fixtures.answers(llm, fixtures.FACTS16)


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_learns_on_cpu_and_registers_checkpoints(db, tiny_model_dir, bits):
    steps = 240 if bits == 4 else 160
    llm, rows = _train_and_reload(
        db,
        tiny_model_dir,
        f"q{bits}",
        bits=bits,
        max_steps=steps,
        save_steps=steps // 2,
        eval_steps=steps // 2,
    )
    assert [r["step"] for r in rows] == [steps // 2, steps]
    ckpt = db.load("Checkpoint", rows[-1]["identifier"])
    assert "adapter_model.safetensors" in os.listdir(ckpt.local_path)
    # the adapter reloads onto the base quantized as in training, and answers
    assert fixtures.answered(llm, fixtures.FACTS16) >= LEARNED, fixtures.answers(llm, fixtures.FACTS16)
    base = llm._get_pipeline()[0].get_base_model()
    linear = base.model.layers[0].mlp.down_proj.base_layer
    assert type(linear).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")


def test_chat_format_training_and_prediction(db, tiny_model_dir, tmp_path):
    # A short chat template of the tokenizer's own: ChatML (the fallback, checked in
    # test_data.py) puts ~40 tokens between question and answer, more than the tiny
    # random model learns to look across in a few hundred CPU steps.
    import shutil

    from transformers import AutoTokenizer

    model_dir = str(tmp_path / "chat-model")
    shutil.copytree(tiny_model_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    tokenizer.save_pretrained(model_dir)

    llm, rows = _train_and_reload(
        db,
        model_dir,
        "chat",
        setup_chat_format=True,
        max_steps=450,
        save_steps=450,
        eval_steps=450,
    )
    assert [r["step"] for r in rows] == [450]
    # predict wraps the bare question the same way: "[user]5+1=[assistant]" -> "6"
    assert fixtures.answered(llm, fixtures.FACTS16) >= LEARNED, fixtures.answers(llm, fixtures.FACTS16)


def test_whole_text_training_with_a_single_key(db, tiny_model_dir):
    from superduper import Table

    db.apply(Table("lines", fields={"text": "str", "_fold": "str"}), force=True)
    db["lines"].insert([{"text": p + c, "_fold": "train"} for p, c in fixtures.FACTS16])
    llm, rows = _train_and_reload(
        db,
        tiny_model_dir,
        "lines",
        table="lines",
        key="text",
        max_steps=240,
        save_steps=240,
        eval_strategy="no",
    )
    assert [r["step"] for r in rows] == [240]
    assert fixtures.answered(llm, fixtures.FACTS16) >= LEARNED, fixtures.answers(llm, fixtures.FACTS16)
