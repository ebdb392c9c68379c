"""The in-use pointer (``adapter_id``) survives re-applies, and every move of it is recorded."""

from __future__ import annotations

import os

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, promote
from superduper_transformers.checkpoint import list_checkpoints, register_checkpoint


def _register(db, tmp_path, step: int):
    folder = tmp_path / "out" / f"checkpoint-{step}"
    os.makedirs(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"w" * 64)
    return register_checkpoint(db, model="tiny", experiment_id="run1", path=str(folder), step=step)


def _moves(db, model="tiny"):
    return [(e["action"], e["from"], e["to"]) for e in promote.promotions(db, model).history]


def test_a_reapply_without_adapter_id_keeps_the_stored_pointer(db, tiny_model_dir, tmp_path):
    first, second = _register(db, tmp_path, 10), _register(db, tmp_path, 20)
    db.apply(LLM("tiny", model_name_or_path=tiny_model_dir, adapter_id=first), force=True)

    # A freshly built model with only new generation settings: the pointer stays.
    db.apply(LLM("tiny", model_name_or_path=tiny_model_dir, predict_kwargs={"max_new_tokens": 2}), force=True)
    stored = db.load("LLM", "tiny")
    assert stored.adapter_id.identifier == first.identifier
    assert stored.predict_kwargs == {"max_new_tokens": 2}

    # A pointer the user sets is written, and each move is in the promotion history.
    db.apply(LLM("tiny", model_name_or_path=tiny_model_dir, adapter_id=second), force=True)
    assert db.load("LLM", "tiny").adapter_id.identifier == second.identifier
    assert _moves(db) == [("apply", None, first.identifier), ("apply", first.identifier, second.identifier)]
    # Recorded moves of an apply are no promotions: nothing to roll back, nothing pinned.
    assert promote.promotions(db, "tiny").pinned() is None


def test_a_retraining_that_dies_first_leaves_the_pointer_where_it_was(
    db, tiny_model_dir, tmp_path, monkeypatch
):
    settings = dict(max_steps=2, save_steps=2, eval_strategy="no", output_dir=str(tmp_path / "out"))
    db.apply(fixtures.make_llm(db, tiny_model_dir, **settings), force=True)
    (trained,) = list_checkpoints(db, "tiny")

    # The same model from its config with another learning rate: a new run that dies at step 1.
    fixtures.interrupt_at(monkeypatch, 1)
    with pytest.raises(Exception, match="interrupted at step 1"):
        db.apply(fixtures.make_llm(db, tiny_model_dir, learning_rate=1e-3, **settings), force=True)
    assert db.load("LLM", "tiny").adapter_id.identifier == trained["identifier"]
    # The training's move is recorded; the run that died moved nothing.
    assert _moves(db) == [("train", None, trained["identifier"])]
