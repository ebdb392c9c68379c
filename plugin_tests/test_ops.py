"""Operating a trained model from the db: metric history across a resume, the plot, promote/rollback.

One SQLite datalayer (in the CLI's ``--data`` layout) is trained once for the module:
``tiny`` with two eval sets, interrupted at step 25 and resumed from its checkpoint 20,
with the alias ``prod`` set on checkpoint 10 while it was interrupted (so pruning had to
keep it). A fake checkpoint of another model is registered beside it.
"""

from __future__ import annotations

import os
import types

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli, history, promote, resume
from superduper_transformers.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    register_checkpoint,
)
from superduper_transformers.history import HistoryError, metric_history, record_history, stored_history

STEPS, EVERY, LOG_EVERY, LIMIT, CRASH = 40, 10, 5, 2, 25


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from superduper import CFG, superduper
    from superduper.components.dataset import Dataset
    from superduper.components.model import Validation

    data = tmp_path_factory.mktemp("ops-data")
    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{data / 'artifact_store'}"
    try:
        db = superduper(f"sqlite:///{data / 'demo.db'}", force_apply=True)
        fixtures.insert_rows(db)
        fixtures.insert_rows(db, table="heldout", facts=[], valid=fixtures.FACTS[1::8])

        def build():
            llm = fixtures.make_llm(
                db,
                tiny_model_dir,
                max_steps=STEPS,
                save_steps=EVERY,
                eval_steps=EVERY,
                logging_steps=LOG_EVERY,
                save_total_limit=LIMIT,
                output_dir=str(data / "out"),
            )
            llm.validation = Validation(
                "tiny-validation",
                key=("x", "y"),
                datasets=[Dataset("heldout", select=db["heldout"].select())],
            )
            return llm

        with pytest.MonkeyPatch.context() as mp:
            fixtures.interrupt_at(mp, CRASH)
            with pytest.raises(Exception, match=f"interrupted at step {CRASH}"):
                db.apply(build(), force=True)
        assert [r["step"] for r in list_checkpoints(db, "tiny")] == [10, 20]
        promote.promote(db, "tiny", 10, alias="prod", by="tester")
        db.apply(build(), force=True)  # resumes from 20

        other = data / "other-ckpt"
        other.mkdir()
        (other / "weights.bin").write_bytes(b"not a model")
        register_checkpoint(db, model="other", experiment_id="x", path=str(other), step=1)
        yield db, data
    finally:
        CFG.artifact_store = old


def test_history_has_every_logging_step_once_in_order_across_the_resume(trained):
    db, _ = trained
    history = metric_history(db, "tiny")
    run = db.load("TrainingRun", resume.run_identifier("tiny", history.experiment_id))
    assert [r["step"] for r in run.resumes] == [20] and run.state == resume.FINISHED

    steps, losses = history.training("loss")
    assert steps == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY)) and all(v > 0 for v in losses)
    evals = history.evaluations()
    assert set(evals["loss"]) == {"valid", "heldout"}
    for name in ("valid", "heldout"):
        assert evals["loss"][name][0] == list(range(EVERY, STEPS + 1, EVERY))
    # The model's eval metrics are continuous too (they restarted at the resume before).
    values = db.load("LLM", "tiny").trainer.metric_values
    assert values["eval_valid_step"] == [10.0, 20.0, 30.0, 40.0]
    assert values["eval_heldout_loss"] == evals["loss"]["heldout"][1]
    # Each checkpoint's metrics match the history at its step.
    for row in list_checkpoints(db, "tiny"):
        at = evals["loss"]["valid"][0].index(row["step"])
        assert row["metrics"]["eval_valid_loss"] == pytest.approx(evals["loss"]["valid"][1][at])


def test_a_resumed_run_replaces_the_history_after_its_checkpoint(db):
    # Saved at 10 and 20; checkpoint 20 failed verification, so the run resumed from 10
    # (its trainer's history restored from checkpoint 10) and saved 20 and 30 again.
    first = [{"step": s, "loss": 1.0} for s in (5, 10, 15, 20)]
    again = [*first[:2], *({"step": s, "loss": 2.0} for s in (15, 20, 25, 30))]
    record_history(db, "m", "run", first, 0, 10)
    record_history(db, "m", "run", first, 10, 20)
    record_history(db, "m", "run", again, 10, 20)
    record_history(db, "m", "run", again, 20, 30)
    assert stored_history(db, "m", "run") == again
    assert stored_history(db, "m", "other-run") == []


def test_the_history_is_read_in_step_order_whatever_the_clocks(db, monkeypatch):
    # Saved at 10 and 20; restarted, rank 0 then ran on a machine whose clock is an hour
    # behind and saved 30 and 40: its rows are written "before" the first ones.
    clock = iter([1000.0, 2000.0, 2000.0 - 3600, 2000.0 - 3590])
    monkeypatch.setattr(history, "time", types.SimpleNamespace(time=lambda: next(clock)))
    entries = [{"step": s, "loss": 1.0 / s} for s in (5, 10, 15, 20, 25, 30, 35, 40)]
    for start in (0, 10, 20, 30):
        record_history(db, "m", "run", entries, start, start + 10)
    assert stored_history(db, "m", "run") == entries


def test_pruning_kept_the_aliased_checkpoint_outside_the_limit(trained):
    db, _ = trained
    steps = [r["step"] for r in list_checkpoints(db, "tiny")]
    assert 10 in steps and STEPS in steps
    assert len(steps) == LIMIT + 1, steps  # the limit counts the unprotected ones
    assert promote.resolve_alias(db, "tiny", "prod").step == 10
    ten = promote.resolve_alias(db, "tiny", "prod").identifier
    assert ten in promote.protected_checkpoints(db, "tiny")


def test_plot_draws_the_loss_and_every_eval_metric_per_eval_set(trained, tmp_path):
    import matplotlib.image

    from superduper_transformers.plot import plot_history

    db, _ = trained
    data = plot_history(db, "tiny", str(tmp_path / "run.png"), width=800, panel_height=250)

    image = matplotlib.image.imread(data.path)
    assert image.shape[:2] == (250 * len(data.panels), 800)
    assert list(data.panels)[0] == "loss"
    assert set(data.panels["loss"]) == {"train", "valid", "heldout"}
    assert data.panels["loss"]["train"][0] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    assert "mean_token_accuracy" in data.panels
    for metric, lines in data.panels.items():
        if metric != "loss":
            assert set(lines) == {"valid", "heldout"}, metric
            assert all(xs == list(range(EVERY, STEPS + 1, EVERY)) for xs, _ in lines.values())
    assert data.checkpoints == [r["step"] for r in list_checkpoints(db, "tiny")]
    in_use = db.load("LLM", "tiny").adapter_id.step
    assert "in use" in data.marked[in_use] and "prod" in data.marked[10]


def test_cli_plot_and_its_errors(trained, tmp_path, capsys, monkeypatch):
    db, data = trained
    out = tmp_path / "cli.png"
    assert cli.main(["--data", str(data), "plot", "tiny", "--out", str(out)]) == 0  # a fresh datalayer
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{out}: run " in capsys.readouterr().out
    monkeypatch.setattr(cli.common, "connect", lambda args: db)  # building a datalayer costs seconds
    assert cli.main(["--data", str(data), "plot", "nope", "--out", str(out)]) == 2
    assert "Model `nope` is not in the database" in capsys.readouterr().err
    assert cli.main(["--data", str(data), "plot", "tiny", "--out", str(tmp_path / "no" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(HistoryError, match="has no training run 'zzz'"):
        metric_history(trained[0], "tiny", "zzz")


def test_promote_and_rollback_record_who_when_from_and_to(trained):
    db, _ = trained
    rows = list_checkpoints(db, "tiny")
    before = db.load("LLM", "tiny").adapter_id.identifier
    target = next(r for r in rows if r["identifier"] != before)

    entry = promote.promote(db, "tiny", target["identifier"], by="alice")

    llm = db.load("LLM", "tiny")
    assert llm.adapter_id.identifier == target["identifier"]
    assert isinstance(llm.predict("1+1="), str)
    assert (entry["from"], entry["to"], entry["by"], entry["action"]) == (
        before,
        target["identifier"],
        "alice",
        "promote",
    )
    # Pinned by the promotion: pruning keeps it.
    assert target["identifier"] in promote.protected_checkpoints(db, "tiny")

    back = promote.rollback(db, "tiny", by="bob")
    assert db.load("LLM", "tiny").adapter_id.identifier == before
    assert (back["from"], back["to"], back["by"], back["action"]) == (
        target["identifier"],
        before,
        "bob",
        "rollback",
    )
    history = db.load("Promotions", "tiny").history
    assert [(e["pointer"], e["action"]) for e in history][-2:] == [
        ("in_use", "promote"),
        ("in_use", "rollback"),
    ]
    assert history[-1]["time"] >= history[-2]["time"]
    with pytest.raises(promote.PromotionError, match="Nothing to roll back: the model of `tiny`"):
        promote.rollback(db, "tiny")


def test_aliases_resolve_for_plain_db_load_users(trained):
    db, _ = trained
    ten = next(r["identifier"] for r in list_checkpoints(db, "tiny") if r["step"] == 10)
    assert db.load("Promotions", "tiny").aliases["prod"] == ten
    assert db.load("Checkpoint", db.load("Promotions", "tiny").aliases["prod"]).step == 10
    llm = promote.load_model(db, "tiny", alias="prod")
    assert llm.adapter_id.identifier == ten and isinstance(llm.predict("1+1="), str)
    assert db.load("LLM", "tiny").adapter_id.identifier != ten  # the stored pointer is untouched

    promote.promote(db, "tiny", "prod", alias="candidate")  # an alias names a checkpoint too
    assert promote.resolve_alias(db, "tiny", "candidate").identifier == ten
    with pytest.raises(promote.PromotionError, match="has no alias `staging`"):
        promote.resolve_alias(db, "tiny", "staging")
    with pytest.raises(promote.PromotionError, match="not a valid alias name"):
        promote.promote(db, "tiny", ten, alias="no spaces")


@pytest.mark.parametrize(
    "model, checkpoint, message",
    [
        ("nope", "10", "Model `nope` is not in the database"),
        ("tiny", "tiny-nothing-step1", "is neither a checkpoint, an alias nor a step of model `tiny`"),
        ("tiny", "999", "is neither a checkpoint, an alias nor a step"),
        ("tiny", "other-x-step1", "Checkpoint `other-x-step1` belongs to model `other`, not `tiny`"),
    ],
)
def test_promote_refuses_what_is_not_the_models_and_writes_nothing(trained, model, checkpoint, message):
    db, _ = trained
    before = (db.load("LLM", "tiny").adapter_id.identifier, db.load("Promotions", "tiny").history)
    with pytest.raises(promote.PromotionError, match=message):
        promote.promote(db, model, checkpoint)
    assert (db.load("LLM", "tiny").adapter_id.identifier, db.load("Promotions", "tiny").history) == before


def test_promote_refuses_a_checkpoint_whose_files_do_not_verify(trained):
    db, _ = trained
    in_use = db.load("LLM", "tiny").adapter_id.identifier
    row = next(r for r in list_checkpoints(db, "tiny") if r["identifier"] != in_use and r["step"] != 10)
    path = os.path.join(load_checkpoint(db, row["identifier"]).local_path, "adapter_config.json")
    mode, content = os.stat(path).st_mode, open(path, "rb").read()
    before = db.load("Promotions", "tiny").history
    os.chmod(path, 0o600)
    try:
        with open(path, "ab") as f:
            f.write(b" ")
        with pytest.raises(
            CheckpointError, match=f"Checkpoint `{row['identifier']}`: file `adapter_config.json`"
        ):
            promote.promote(db, "tiny", row["identifier"])
    finally:
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
    assert db.load("LLM", "tiny").adapter_id.identifier == in_use
    assert db.load("Promotions", "tiny").history == before


def test_cli_promote_rollback_and_promotions(trained, capsys, monkeypatch):
    db, data = trained
    monkeypatch.setattr(cli.common, "connect", lambda args: db)  # building a datalayer costs seconds
    base = ["--data", str(data)]
    ten = next(r["identifier"] for r in list_checkpoints(db, "tiny") if r["step"] == 10)
    assert cli.main([*base, "promote", "tiny", "10", "--by", "carol"]) == 0
    assert "carol  promote in_use: " in capsys.readouterr().out
    assert cli.main([*base, "promotions", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"in use: {ten}" in out and f"prod: {ten}" in out
    assert cli.main([*base, "rollback", "tiny"]) == 0
    assert f"rollback in_use: {ten} -> " in capsys.readouterr().out
    assert cli.main([*base, "promote", "tiny", "other-x-step1"]) == 2
    assert "belongs to model `other`" in capsys.readouterr().err
    assert cli.main([*base, "rollback", "nope"]) == 2
    assert "Model `nope` is not in the database" in capsys.readouterr().err


def _step(db, step):
    return next(r["identifier"] for r in list_checkpoints(db, "tiny") if r["step"] == step)


def _state(db):
    """What a refused delete must leave as it was: rows, pointers, aliases, history."""
    record = db.load("Promotions", "tiny")
    in_use = db.load("LLM", "tiny").adapter_id.identifier
    return list_checkpoints(db, "tiny"), in_use, dict(record.aliases), list(record.history)


def test_cli_checkpoints_shows_each_checkpoints_aliases(trained, capsys, monkeypatch):
    db, data = trained
    monkeypatch.setattr(cli.query, "connect", lambda args: db)  # building a datalayer costs seconds
    assert cli.main(["--data", str(data), "checkpoints", "tiny"]) == 0
    lines = {
        line[2:].split()[0]: line for line in capsys.readouterr().out.splitlines()
    }  # after the `*` column
    assert lines[_step(db, 10)].endswith(
        "  [candidate, prod]"
    )  # prod from the fixture, candidate from a test above
    assert "[" not in lines[_step(db, STEPS)]


def test_delete_checkpoint_refuses_an_aliased_checkpoint_and_writes_nothing(trained, capsys, monkeypatch):
    db, data = trained
    ten = _step(db, 10)
    assert promote.promotions(db, "tiny").aliases == {"prod": ten, "candidate": ten}
    before = _state(db)
    for name in (ten, 10, "prod"):  # by identifier, step or alias
        with pytest.raises(promote.PromotionError) as e:
            promote.delete_checkpoint(db, "tiny", name)
        message = str(e.value)
        assert f"Checkpoint `{ten}` of model `tiny` is protected" in message
        assert "alias `candidate` points at it" in message and "alias `prod` points at it" in message
        assert "superduper-transformers promote tiny CHECKPOINT --alias candidate" in message
        assert "force=True" in message
    monkeypatch.setattr(cli.common, "connect", lambda args: db)
    assert cli.main(["--data", str(data), "delete-checkpoint", "tiny", "prod"]) == 2
    err = capsys.readouterr().err
    assert f"delete-checkpoint: Checkpoint `{ten}` of model `tiny` is protected" in err and "--force" in err
    assert _state(db) == before
    assert load_checkpoint(db, ten).step == 10  # its files are all there and verify


def test_delete_checkpoint_refuses_the_checkpoint_in_use_even_forced(trained):
    db, _ = trained
    in_use = db.load("LLM", "tiny").adapter_id.identifier
    before = _state(db)
    with pytest.raises(promote.PromotionError) as e:
        promote.delete_checkpoint(db, "tiny", in_use, force=True)
    assert f"Cannot delete checkpoint `{in_use}`: model `tiny` uses it" in str(e.value)
    assert "Promote another checkpoint first" in str(e.value)
    assert _state(db) == before
    load_checkpoint(db, in_use)


def test_delete_checkpoint_refuses_a_rollback_target(trained):
    db, _ = trained
    last, thirty = _step(db, STEPS), _step(db, 30)
    assert db.load("LLM", "tiny").adapter_id.identifier == last
    promote.promote(db, "tiny", thirty, by="tester")  # a rollback would return to `last`
    try:
        before = _state(db)
        with pytest.raises(
            promote.PromotionError,
            match=f"Checkpoint `{last}` of model `tiny` is protected: `rollback` of the model would return to it",
        ):
            promote.delete_checkpoint(db, "tiny", last)
        assert _state(db) == before
    finally:
        promote.rollback(db, "tiny", by="tester")
    assert db.load("LLM", "tiny").adapter_id.identifier == last


def test_delete_checkpoint_deletes_a_free_one_and_forced_an_aliased_one_with_its_aliases(
    trained, capsys, monkeypatch
):
    db, data = trained
    monkeypatch.setattr(cli.common, "connect", lambda args: db)
    base = ["--data", str(data), "delete-checkpoint", "tiny"]
    ten, thirty = _step(db, 10), _step(db, 30)
    ten_folder = load_checkpoint(db, ten).local_path

    assert cli.main([*base, "30"]) == 0  # nothing points at it
    assert capsys.readouterr().out.strip() == f"deleted {thirty}"
    assert cli.main([*base, "prod", "--force", "--by", "dave"]) == 0
    assert capsys.readouterr().out.strip() == f"deleted {ten} and its aliases candidate, prod"

    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [STEPS]
    assert not os.path.exists(ten_folder)
    record = db.load("Promotions", "tiny")
    assert record.aliases == {}  # none left pointing at nothing
    assert [(e["pointer"], e["action"], e["from"], e["to"], e["by"]) for e in record.history[-2:]] == [
        ("candidate", "delete", ten, None, "dave"),
        ("prod", "delete", ten, None, "dave"),
    ]
    with pytest.raises(promote.PromotionError, match="has no alias `prod`"):
        promote.resolve_alias(db, "tiny", "prod")


def test_delete_model_removes_its_promotions_and_history(trained):
    # Last in this module: it deletes the trained model.
    from superduper_transformers import delete_model

    db, _ = trained
    experiment_id = metric_history(db, "tiny").experiment_id
    delete_model(db, "tiny")
    assert "tiny" not in db.show("Promotions")
    assert stored_history(db, "tiny", experiment_id) == []
    with pytest.raises(promote.PromotionError, match="Model `tiny` is not in the database"):
        promote.resolve_alias(db, "tiny", "prod")
