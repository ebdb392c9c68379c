"""No training is lost to its settings, and deleting a model deletes all of it."""

from __future__ import annotations

import os

import pytest

from plugin_tests import fixtures
from superduper_transformers import delete_model, resume
from superduper_transformers.checkpoint import list_checkpoints, load_checkpoint

SHORT = dict(max_steps=30, save_steps=10, eval_steps=10)


@pytest.mark.parametrize(
    "settings",
    [dict(save_strategy="no"), dict(log_to_db=False), dict(save_steps=20)],
    ids=["save_strategy=no", "log_to_db=False", "save_steps-not-dividing-max_steps"],
)
def test_the_final_weights_are_always_stored(db, tiny_model_dir, tmp_path, settings):
    llm = fixtures.make_llm(db, tiny_model_dir, **{**SHORT, **settings, "output_dir": str(tmp_path / "out")})
    db.apply(llm, force=True)
    steps = [r["step"] for r in list_checkpoints(db, "tiny")]
    assert steps[-1] == 30, steps  # the last step is in the db, whatever the schedule
    assert steps == ([20, 30] if settings.get("save_steps") == 20 else [30])
    reloaded = db.load("LLM", "tiny")
    assert reloaded.adapter_id.step == 30
    assert isinstance(reloaded.predict("1+1="), str)


def test_delete_model_removes_its_checkpoints_runs_and_files(
    db, tiny_model_dir, tmp_path, artifact_store, monkeypatch
):
    fixtures.interrupt_at(monkeypatch, 25)
    with pytest.raises(Exception, match="interrupted at step 25"):
        db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out")), force=True)
    monkeypatch.undo()
    rows = list_checkpoints(db, "tiny")
    assert [r["step"] for r in rows] == [10, 20] and resume.is_interrupted(db, "tiny")
    folders = [os.path.dirname(load_checkpoint(db, r["identifier"]).local_path) for r in rows]
    # one folder is lost already: deleting metadata must not need the files
    import shutil

    shutil.rmtree(folders[0])

    removed = delete_model(db, "tiny")

    assert removed["models"] == 1 and removed["checkpoints"] == 2 and removed["runs"] == 1
    assert "tiny" not in db.show("LLM") and list_checkpoints(db, "tiny") == []
    assert resume.unfinished_runs(db, "tiny") == [] and not resume.is_interrupted(db, "tiny")
    assert not any(os.path.exists(f) for f in folders)
    # a new model of the same name starts afresh
    db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out2")), force=True)
    (experiment_id,) = {r["experiment_id"] for r in list_checkpoints(db, "tiny")}
    assert db.load("TrainingRun", resume.run_identifier("tiny", experiment_id)).resumes == []


def test_a_run_of_a_torn_down_model_is_never_resumed(db, tiny_model_dir, tmp_path, monkeypatch):
    fixtures.interrupt_at(monkeypatch, 25)
    with pytest.raises(Exception, match="interrupted at step 25"):
        db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out")), force=True)
    monkeypatch.undo()
    (old,) = {r["experiment_id"] for r in list_checkpoints(db, "tiny")}
    db.teardown("LLM", "tiny", force=True)  # superduper's own delete: the run stays behind

    db.apply(fixtures.make_llm(db, tiny_model_dir, **SHORT, output_dir=str(tmp_path / "out")), force=True)

    assert db.load("TrainingRun", resume.run_identifier("tiny", old)).state == resume.ABANDONED
    new = {r["experiment_id"] for r in list_checkpoints(db, "tiny")} - {old}
    (experiment_id,) = new
    run = db.load("TrainingRun", resume.run_identifier("tiny", experiment_id))
    assert run.state == resume.FINISHED and run.resumes == []


def test_a_changed_trainer_trains_again_on_reapply(db, tiny_model_dir, tmp_path):
    """A re-applied model whose training settings changed starts a new run (never silence);
    the same settings re-applied train nothing."""
    from superduper_transformers.checkpoint import list_checkpoints

    def apply(**changes):
        settings = dict(max_steps=2, save_steps=2, eval_steps=2, output_dir=str(tmp_path / "out"))
        db.apply(fixtures.make_llm(db, tiny_model_dir, **{**settings, **changes}), force=True)

    apply()
    apply(learning_rate=1e-3)
    rows = list_checkpoints(db, "tiny")
    assert len(db.show("TrainingRun")) == 2 and len({r["experiment_id"] for r in rows}) == 2
    assert db.load("LLM", "tiny").adapter_id.identifier == rows[-1]["identifier"]
    apply(learning_rate=1e-3)  # nothing changed
    assert len(db.show("TrainingRun")) == 2
