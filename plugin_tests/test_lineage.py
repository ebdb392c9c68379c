"""Lineage: every run and checkpoint records the data it trained on, and a resume notices
when the rows changed while the run was interrupted (``LLMTrainer.on_data_change``)."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers import lineage, resume
from superduper_transformers.checkpoint import list_checkpoints
from superduper_transformers.trainer_args import ConfigError

SHORT = dict(max_steps=30, save_steps=10, eval_steps=10)


def _runs(db, model="tiny"):
    """``{experiment_id: (state, resumes, data_fingerprint)}`` of the model's runs."""
    rows = db["TrainingRun"].filter(db["TrainingRun"]["model"] == model).select("identifier").execute()
    runs = [db.load("TrainingRun", r["identifier"]) for r in rows]
    return {r.experiment_id: (r.state, [e["step"] for e in r.resumes], r.data_fingerprint) for r in runs}


def _fingerprints(db, model="tiny"):
    return [db.load("Checkpoint", r["identifier"]).data_fingerprint for r in list_checkpoints(db, model)]


def test_the_fingerprint_is_on_the_run_and_on_every_checkpoint(db, tiny_model_dir, tmp_path):
    db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out")), force=True)

    ((state, _, fingerprint),) = _runs(db).values()
    assert state == resume.FINISHED
    assert fingerprint["train_rows"] == len(fixtures.FACTS) and fingerprint["eval_rows"] == len(
        fixtures.VALID
    )
    assert "facts" in fingerprint["query"] and len(fingerprint["train_sha256"]) == 64
    assert fingerprint["max_seq_length"] == 512 and fingerprint["prompt_template"] == "{input}"
    assert fingerprint["chat_format"] is False
    checkpoints = _fingerprints(db)
    assert len(checkpoints) == 3 and all(f == fingerprint for f in checkpoints)

    # The same rows inserted in another order (another table): the same counts and hashes.
    fixtures.insert_rows(db, "facts_reversed", facts=fixtures.FACTS[::-1], valid=fixtures.VALID[::-1])
    llm = fixtures.make_llm(
        db, tiny_model_dir, "tiny2", table="facts_reversed", max_steps=10, save_steps=10, eval_steps=10
    )
    db.apply(llm, force=True)
    ((_, _, other),) = _runs(db, "tiny2").values()
    for key in ("train_rows", "eval_rows", "train_sha256", "eval_sha256"):
        assert other[key] == fingerprint[key], key
    assert other["query"] != fingerprint["query"]
    assert _fingerprints(db, "tiny2") == [other]


def test_content_hash_ignores_row_order_and_sees_every_change():
    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]
    h = lineage.content_hash(rows)
    assert lineage.content_hash(rows[::-1]) == h
    assert lineage.content_hash([{"y": r["y"], "x": r["x"]} for r in rows]) == h  # key order
    assert lineage.content_hash(rows[1:]) != h
    assert lineage.content_hash(rows + rows[:1]) != h  # a duplicated row counts
    assert lineage.content_hash([{**rows[0], "y": "7"}, *rows[1:]]) != h
    # a run recorded before fingerprints existed has nothing to compare
    assert lineage.data_changes({}, {"train_rows": 3}) == []
    assert resume.TrainingRun("old", model="tiny").data_fingerprint == {}


def test_on_data_change_is_validated_and_is_not_a_setting_that_restarts(db):
    from superduper_transformers import LLMTrainer

    with pytest.raises(ConfigError, match=r"`on_data_change` must be one of .*'sometimes'"):
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), on_data_change="sometimes")
    assert "on_data_change" in resume.CHANGES_THAT_RESUME


def _interrupted(db, tiny_model_dir, tmp_path, monkeypatch):
    """A run interrupted at step 25, with checkpoints at 10 and 20."""
    fixtures.interrupt_at(monkeypatch, 25)
    with pytest.raises(Exception, match="interrupted at step 25"):
        db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out")), force=True)
    monkeypatch.undo()
    (experiment_id,) = _runs(db)
    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [10, 20]
    return experiment_id


def _reapply(db, tiny_model_dir, tmp_path, **settings):
    llm = fixtures.make_llm(db, tiny_model_dir, **SHORT, **settings, output_dir=str(tmp_path / "out"))
    db.apply(llm, force=True)


def _changed_warnings(messages):
    return [m for m in messages if "training data changed" in m]


def test_unchanged_rows_resume_silently(db, tiny_model_dir, tmp_path, monkeypatch, caplog_loguru):
    old = _interrupted(db, tiny_model_dir, tmp_path, monkeypatch)
    caplog_loguru.clear()

    _reapply(db, tiny_model_dir, tmp_path, on_data_change="refuse")

    state, resumed_at, _ = _runs(db)[old]
    assert (state, resumed_at) == (resume.FINISHED, [20])
    assert not _changed_warnings(caplog_loguru), caplog_loguru
    run = db.load("TrainingRun", resume.run_identifier("tiny", old))
    assert "data_changes" not in run.resumes[-1]


def _add_a_training_row(db):
    db["facts"].insert([{"x": "9+9=", "y": "18", "_fold": "train"}])


def test_changed_rows_warn_and_resume(db, tiny_model_dir, tmp_path, monkeypatch, caplog_loguru):
    old = _interrupted(db, tiny_model_dir, tmp_path, monkeypatch)
    before = _runs(db)[old][2]
    _add_a_training_row(db)
    caplog_loguru.clear()

    _reapply(db, tiny_model_dir, tmp_path)  # on_data_change="warn", the default

    ((experiment_id, (state, resumed_at, after)),) = _runs(db).items()
    assert experiment_id == old and state == resume.FINISHED and resumed_at == [20]
    (warning,) = _changed_warnings(caplog_loguru)
    assert "training rows: 32 before, 33 now" in warning and "content hash of the training rows" in warning
    assert old in warning and "on_data_change='restart'" in warning
    run = db.load("TrainingRun", resume.run_identifier("tiny", old))
    assert run.resumes[-1]["data_changes"][0] == "training rows: 32 before, 33 now"
    # the run and the checkpoints saved after the resume carry the data they trained on
    assert after["train_rows"] == 33 and before["train_rows"] == 32
    by_step = dict(zip([r["step"] for r in list_checkpoints(db, "tiny")], _fingerprints(db)))
    assert by_step[30] == after and by_step[20] == before


def test_changed_rows_refused_before_anything_is_written(db, tiny_model_dir, tmp_path, monkeypatch):
    old = _interrupted(db, tiny_model_dir, tmp_path, monkeypatch)
    _add_a_training_row(db)
    runs, checkpoints = _runs(db), list_checkpoints(db, "tiny")
    models = db.show("LLM"), db.show("LLM", "tiny")

    with pytest.raises(resume.DataChangedError) as error:
        _reapply(db, tiny_model_dir, tmp_path, on_data_change="refuse")

    message = str(error.value)
    assert f"Run {old} of tiny" in message and "training rows: 32 before, 33 now" in message
    assert "Restore the rows" in message and "on_data_change='restart'" in message
    assert "resume_from_db='never'" in message
    assert _runs(db) == runs and list_checkpoints(db, "tiny") == checkpoints
    assert (db.show("LLM"), db.show("LLM", "tiny")) == models
    assert resume.is_interrupted(db, "tiny")


def test_changed_rows_restart_a_fresh_run(db, tiny_model_dir, tmp_path, monkeypatch, caplog_loguru):
    old = _interrupted(db, tiny_model_dir, tmp_path, monkeypatch)
    _add_a_training_row(db)
    caplog_loguru.clear()

    _reapply(db, tiny_model_dir, tmp_path, on_data_change="restart")

    runs = _runs(db)
    assert runs[old][0] == resume.ABANDONED
    ((new, (state, resumed_at, fingerprint)),) = [(k, v) for k, v in runs.items() if k != old]
    assert state == resume.FINISHED and resumed_at == [] and fingerprint["train_rows"] == 33
    (warning,) = _changed_warnings(caplog_loguru)
    assert "starting a fresh run" in warning
    assert [r["step"] for r in list_checkpoints(db, "tiny", new)] == [10, 20, 30]
