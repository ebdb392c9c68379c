"""transformers' conventions, kept: ``load_best_model_at_end``, early stopping, user
callbacks, ``report_to`` trackers; and evaluation on generations with superduper's own
``Validation`` / ``Metric`` components."""

from __future__ import annotations

import glob
import os

import pytest

from plugin_tests import fixtures
from superduper_transformers.checkpoint import best_of_model, list_checkpoints
from superduper_transformers.trainer_args import ConfigError

#: Validation rows whose answers are wrong by 3: the eval loss falls while the model learns
#: the format of an answer, then rises while it learns the true sums: the best checkpoint
#: is an early one, and the eval metric stops improving.
WRONG = [(p, str(int(c) + 3)) for p, c in fixtures.FACTS[::2]]


@pytest.fixture
def wrong_db(artifact_store, tmp_path):
    from superduper import superduper

    db = superduper(f"mongomock://conv-{tmp_path.name}", force_apply=True)
    fixtures.insert_rows(db, facts=fixtures.FACTS, valid=WRONG)
    yield db
    db.disconnect()


def _eval_history(llm):
    history = llm.trainer.metric_values
    return [int(s) for s in history["eval_step"]], list(history["eval_loss"])


@pytest.mark.parametrize("load_best", [False, True])
def test_the_model_uses_the_last_checkpoint_unless_load_best_model_at_end(
    wrong_db, tiny_model_dir, load_best
):
    db = wrong_db
    settings = dict(max_steps=60, save_steps=10, eval_steps=10, logging_steps=10, save_total_limit=1)
    if load_best:
        settings["load_best_model_at_end"] = True
    db.apply(fixtures.make_llm(db, tiny_model_dir, **settings), force=True)

    llm = db.load("LLM", "tiny")
    steps, losses = _eval_history(llm)
    best_step = steps[min(range(len(losses)), key=lambda i: (losses[i], -steps[i]))]
    assert best_step < 60, (steps, losses)  # the case where the two meanings differ
    best = best_of_model(db, "tiny")
    assert best["step"] == best_step  # the best stays marked, whichever the model uses
    kept = sorted(r["step"] for r in list_checkpoints(db, "tiny"))
    if load_best:
        assert llm.adapter_id.step == best_step
        assert kept == [best_step]  # save_total_limit=1: the best only, as transformers keeps
    else:
        assert llm.adapter_id.step == 60
        assert kept == [best_step, 60]  # the one in use and the best, even over the limit
    assert llm.adapter_id.identifier in {r["identifier"] for r in list_checkpoints(db, "tiny")}


def test_load_best_model_at_end_when_only_the_end_is_recorded(wrong_db, tiny_model_dir):
    # log_to_db=False: the run is registered at its end (locally as a Ray run is, through
    # `register_final_checkpoint`): the best is registered too, and the model uses it.
    db = wrong_db
    settings = dict(max_steps=40, save_steps=10, eval_steps=10, logging_steps=10, save_total_limit=None)
    db.apply(
        fixtures.make_llm(db, tiny_model_dir, log_to_db=False, load_best_model_at_end=True, **settings),
        force=True,
    )
    rows = list_checkpoints(db, "tiny")
    best = min(rows, key=lambda r: r["metrics"]["eval_loss"])
    assert best["step"] < 40 and [r["step"] for r in rows] == [best["step"], 40]
    assert db.load("LLM", "tiny").adapter_id.step == best["step"]


def test_load_best_model_at_end_with_misaligned_save_steps_is_refused(db, tiny_model_dir):
    llm = fixtures.make_llm(db, tiny_model_dir, load_best_model_at_end=True, save_steps=30, eval_steps=20)
    with pytest.raises(ConfigError, match=r"`save_steps`=30 must be a multiple of `eval_steps`=20"):
        db.apply(llm, force=True)
    assert "LLM" not in db.show()


def test_early_stopping_stops_when_the_eval_loss_stops_improving(wrong_db, tiny_model_dir):
    db = wrong_db
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=200,
        save_steps=1000,  # no scheduled save: the stop step must be saved all the same
        eval_steps=10,
        logging_steps=10,
        save_total_limit=None,
        early_stopping_patience=2,
    )
    db.apply(llm, force=True)

    llm = db.load("LLM", "tiny")
    steps, losses = _eval_history(llm)
    # Where transformers' EarlyStoppingCallback must stop: 2 evaluations without improvement.
    best, waited, expected = float("inf"), 0, None
    for step, loss in zip(steps, losses):
        waited = 0 if loss < best else waited + 1
        best = min(best, loss)
        if waited >= 2:
            expected = step
            break
    assert expected is not None and expected < 200, (steps, losses)
    assert steps[-1] == expected  # no evaluation after the stop
    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [expected]  # saved, registered
    assert llm.adapter_id.step == expected  # and used
    (run,) = [db.load("TrainingRun", name) for name in db.show("TrainingRun")]
    assert run.state == "finished"


def test_early_stopping_needs_evaluation_data(db, tiny_model_dir):
    llm = fixtures.make_llm(db, tiny_model_dir, early_stopping_patience=2, eval_strategy="no")
    with pytest.raises(ConfigError, match=r"`early_stopping_patience=2` needs evaluations"):
        db.apply(llm, force=True)
    with pytest.raises(ConfigError, match=r"`early_stopping_patience` must be None .* got 0"):
        fixtures.make_llm(db, tiny_model_dir, early_stopping_patience=0)


def test_user_callbacks_by_import_path_and_tensorboard(db, tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboardX")  # transformers' TensorBoardCallback writes with it
    fixtures.CALLBACK_EVENTS.clear()
    out = tmp_path / "tb-out"
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=20,
        save_steps=10,
        eval_steps=10,
        logging_steps=5,
        output_dir=str(out),
        report_to=["tensorboard"],
        callbacks=[
            "plugin_tests.fixtures:RecordingCallback",
            {"class": "plugin_tests.fixtures:RecordingCallback", "kwargs": {"tag": "second"}},
        ],
    )
    db.apply(llm, force=True)

    for tag in ("user", "second"):
        events = [(e, s) for t, e, s in fixtures.CALLBACK_EVENTS if t == tag]
        assert [s for e, s in events if e == "step_end"] == list(range(1, 21))
        assert [s for e, s in events if e == "log"] == [5, 10, 15, 20]
    # stored as JSON, rebuilt from the path
    stored = db.load("LLM", "tiny").trainer.callbacks
    assert stored == [
        {"class": "plugin_tests.fixtures:RecordingCallback", "kwargs": {}},
        {"class": "plugin_tests.fixtures:RecordingCallback", "kwargs": {"tag": "second"}},
    ]
    # tensorboard event files in the output folder, and the db records the run as always
    assert glob.glob(os.path.join(out, "*", "runs", "*", "events.out.tfevents.*"))  # in the run's folder
    assert [r["step"] for r in list_checkpoints(db, "tiny")][-1] == 20


def test_bad_callbacks_are_refused_before_anything_is_written(db, tiny_model_dir):
    with pytest.raises(
        ConfigError, match=r"`callbacks\[0\]` is a RecordingCallback instance: .*never pickled"
    ):
        fixtures.make_llm(db, tiny_model_dir, callbacks=[fixtures.RecordingCallback()])
    with pytest.raises(ConfigError, match=r"`callbacks\[0\]`=\{'class': 'not a path'"):
        fixtures.make_llm(db, tiny_model_dir, callbacks=[{"class": "not a path"}])
    llm = fixtures.make_llm(db, tiny_model_dir, callbacks=["plugin_tests.no_such_module:Callback"])
    with pytest.raises(ConfigError, match=r"cannot import 'plugin_tests.no_such_module:Callback'"):
        db.apply(llm, force=True)
    llm = fixtures.make_llm(db, tiny_model_dir, callbacks=["plugin_tests.fixtures:answered"])
    with pytest.raises(ConfigError, match=r"not a subclass of transformers.TrainerCallback"):
        db.apply(llm, force=True)
    assert "LLM" not in db.show()


def test_a_tracker_that_is_not_installed_is_refused_with_its_extra(db, tiny_model_dir):
    from superduper_transformers._optional import is_available

    missing = next((m for m in ("mlflow", "wandb") if not is_available(m)), None)
    if missing is None:
        pytest.skip("mlflow and wandb are both installed here")
    llm = fixtures.make_llm(db, tiny_model_dir, report_to=[missing])
    with pytest.raises(
        ConfigError,
        match=rf"`report_to` names '{missing}', which needs the package `{missing}`.*"
        rf"superduper_transformers\[{missing}\]",
    ):
        db.apply(llm, force=True)
    with pytest.raises(
        ConfigError, match=r"`report_to` names 'tensorbored', which transformers does not know"
    ):
        db.apply(fixtures.make_llm(db, tiny_model_dir, report_to="tensorbored"), force=True)
    assert "LLM" not in db.show()


def test_validation_metrics_on_generations_and_recorded_samples(db, tiny_model_dir):
    from superduper.components.dataset import Dataset
    from superduper.components.model import Validation

    from superduper_transformers import ImportedMetric

    heldout = fixtures.FACTS[1::4]  # trained on, asked again through the Validation
    fixtures.insert_rows(db, table="heldout", facts=[], valid=heldout)
    llm = fixtures.make_llm(
        db, tiny_model_dir, max_steps=300, save_steps=100, eval_steps=100, record_generations=3
    )
    llm.validation = Validation(
        "facts-validation",
        key=("x", "y"),
        metrics=[ImportedMetric("exact", function="plugin_tests.fixtures:exact_match")],
        datasets=[Dataset("heldout", select=db["heldout"].select())],
    )
    db.apply(llm, force=True)

    llm = db.load("LLM", "tiny")
    (key,) = [k for k in llm.metric_values if k.startswith("heldout/")]
    score = llm.metric_values[key]["exact"]
    # the stored score is the model's: recomputed from its answers, and it learned the facts
    assert score == fixtures.answered(llm, heldout) / len(heldout)
    assert score >= 0.75, fixtures.answers(llm, heldout)
    # 3 prompts of the first eval set (`_fold='valid'`) generated at each evaluation
    samples = llm.metric_values["generations"]
    assert [s["step"] for s in samples] == [100] * 3 + [200] * 3 + [300] * 3
    first = fixtures.VALID[:3]
    assert [(s["set"], s["input"], s["target"]) for s in samples[:3]] == [("valid", p, c) for p, c in first]
    # the last ones are what the trained model (the last checkpoint) answers
    assert [s["generation"].strip() for s in samples[-3:]] == fixtures.answers(llm, first)


def test_a_trainer_stored_before_these_settings_trains_as_before(db):
    # A row written before the fields existed reads them as NULL (None) after the migration.
    from superduper_transformers import LLMTrainer
    from superduper_transformers.settings import TrainSettings

    old = LLMTrainer(
        "old",
        key=("x", "y"),
        select=db["facts"].select(),
        callbacks=None,
        early_stopping_patience=None,
        early_stopping_threshold=None,
        record_generations=None,
    )
    settings = TrainSettings.from_trainer(old)
    assert (settings.callbacks, settings.early_stopping, settings.record_generations) == ((), None, 0)
    assert old.callbacks == []
