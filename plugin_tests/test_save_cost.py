"""A checkpoint save does the same database work at the 1st save as at the Nth."""

from __future__ import annotations

import os

import pytest

from plugin_tests import fixtures


@pytest.mark.parametrize("limit", [None, 2])
def test_database_reads_per_save_do_not_grow_with_the_checkpoints(
    db, tiny_model_dir, tmp_path, monkeypatch, limit
):
    from superduper.base.datalayer import Datalayer

    from superduper_transformers import checkpoint
    from superduper_transformers.launch.callback import LLMCallback

    reads, current = [], {"rows": 0, "loads": 0}
    list_checkpoints, load, on_save = checkpoint.list_checkpoints, Datalayer.load, LLMCallback.on_save

    def counted_list(*a, **k):
        rows = list_checkpoints(*a, **k)
        current["rows"] += len(rows)
        return rows

    def counted_load(self, *a, **k):
        current["loads"] += 1
        return load(self, *a, **k)

    def counted_save(self, *a, **k):
        current.update(rows=0, loads=0)
        on_save(self, *a, **k)
        reads.append((current["rows"], current["loads"]))

    monkeypatch.setattr(checkpoint, "list_checkpoints", counted_list)
    monkeypatch.setattr(Datalayer, "load", counted_load)
    monkeypatch.setattr(LLMCallback, "on_save", counted_save)
    steps = 6
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=steps,
        save_steps=1,
        save_total_limit=limit,
        eval_strategy="no",
        output_dir=str(tmp_path / "out"),
    )
    db.apply(llm, force=True)
    assert len(reads) == steps
    # Once pruning starts (after `limit` saves), every save reads as many rows as the next.
    steady = reads[(limit or 0) + 1 :]
    assert len(set(steady)) == 1, reads
    assert len(checkpoint.list_checkpoints(db, "tiny")) == (limit or steps)


@pytest.fixture(scope="module")
def traced_training(tiny_model_dir, tmp_path_factory):
    """One training on a SQLite file (4 steps, a save and a log at every step, the last 2
    checkpoints kept) with every SQL statement traced (sqlite3's trace, schema reads
    included), counted per checkpoint save, per progress write and for recording the start
    and the end of the run. Shared by the tests below: one training, not one each."""
    from superduper import CFG, superduper

    from superduper_transformers import resume
    from superduper_transformers.launch import progress
    from superduper_transformers.launch.callback import LLMCallback

    tmp = tmp_path_factory.mktemp("traced")
    old_store, CFG.artifact_store = CFG.artifact_store, f"filesystem://{tmp / 'artifact_store'}"
    db = superduper(f"sqlite:///{tmp / 'db.sqlite'}", force_apply=True)
    fixtures.insert_rows(db)
    backend = getattr(db.databackend, "_backend", db.databackend)
    with backend.connection_manager.get_connection() as conn:
        connection = conn.con
    statements: list = []
    cost: dict = {"save": [], "progress": [], "start": [], "finish": []}

    def counted(name, function):
        def wrapper(*a, **k):
            before = len(statements)
            try:
                return function(*a, **k)
            finally:
                cost[name].append(len(statements) - before)

        return wrapper

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LLMCallback, "on_save", counted("save", LLMCallback.on_save))
        patch.setattr(
            progress.ProgressCallback, "_write", counted("progress", progress.ProgressCallback._write)
        )
        patch.setattr(resume, "start_run", counted("start", resume.start_run))
        patch.setattr(resume, "finish_run", counted("finish", resume.finish_run))
        llm = fixtures.make_llm(
            db,
            tiny_model_dir,
            max_steps=4,
            save_steps=1,
            save_total_limit=2,
            logging_steps=1,
            eval_strategy="no",
            output_dir=str(tmp / "out"),
        )
        connection.set_trace_callback(statements.append)
        try:
            db.apply(llm, force=True)
        finally:
            connection.set_trace_callback(None)
    yield db, cost
    db.disconnect()
    CFG.artifact_store = old_store


def test_a_checkpoint_save_costs_at_most_40_sql_statements_on_sqlite(traced_training):
    """Every SQL statement of each save on a SQLite file (sqlite3's trace), the saves that
    prune included: register the checkpoint, move the pointer, append the history, prune.
    (Before: ~280 a save, ~830 with a prune: superduper's apply of the whole model and
    its teardown of a checkpoint reflected the schema of every table; then 42 and 75, the
    checkpoint's row still superduper's apply and its listing superduper's query: now 22
    and 35.) The first save of a database also creates the database id, the checkpoint,
    promotion and history tables, once (230 statements before its records were inserts)."""
    from superduper_transformers import history, promote
    from superduper_transformers.checkpoint import list_checkpoints
    from superduper_transformers.store import artifacts

    sqlite_db, cost = traced_training
    per_save = cost["save"]
    assert len(per_save) == 4
    assert max(per_save[1:]) <= 40, per_save
    assert per_save[0] <= 130, per_save
    # ... and the saves did their work: pruned to the last 2, rows and folders alike,
    # the model pointing at the last, each save's history stored.
    rows = list_checkpoints(sqlite_db, "tiny")
    assert [r["step"] for r in rows] == [3, 4]
    assert promote.stored_pointer(sqlite_db, "tiny") == rows[-1]["identifier"]
    assert sqlite_db.load("LLM", "tiny").adapter_id.identifier == rows[-1]["identifier"]
    root = artifacts.store_root(sqlite_db)
    stored = sorted(n for n in os.listdir(root) if n.startswith(artifacts.CHECKPOINT_PREFIX))
    assert stored == sorted(r["artifact_id"] for r in rows)
    relations = sqlite_db["ArtifactRelations"]
    related = relations.filter(relations["component"] == "Checkpoint").select("identifier").execute()
    assert {r["identifier"] for r in related} == {r["identifier"] for r in rows}
    run = rows[-1]["experiment_id"]
    assert [e["step"] for e in history.stored_history(sqlite_db, "tiny", run)] == [1, 2, 3, 4]


def test_progress_writes_and_the_start_and_end_of_a_run_cost_few_sql_statements_on_sqlite(traced_training):
    """The SQL statements of each progress write and of recording the start and the end of
    the run, in the same training. (Before: a progress write was superduper's apply of the
    whole ``TrainingRun``, ~145 statements; the end of the run two full applies, of the run
    and of the model row; the start a new run's apply and the model row's: 106 statements
    with superduper's apply of the new run's row, 45 now.) What they
    wrote is then read back as another process would: the run's progress and state, and
    the model row's marker of the run."""
    from superduper_transformers import resume
    from superduper_transformers.launch import progress

    sqlite_db, cost = traced_training
    assert len(cost["progress"]) >= 4 and len(cost["start"]) == len(cost["finish"]) == 1, cost
    assert max(cost["progress"]) <= 10, cost  # one UPDATE in its transaction
    assert cost["finish"][0] <= 20, cost  # the run's state, the model row's marker
    # the new run's row: one INSERT, after superduper creates the table of the db's first run
    assert cost["start"][0] <= 55, cost
    [run] = [sqlite_db.load("TrainingRun", i) for i in sqlite_db.show("TrainingRun")]
    assert run.state == resume.FINISHED
    assert run.progress["step"] == 4 and run.progress["phase"] == progress.ENDED
    assert run.progress["loss"] is not None
    marker = sqlite_db.load("LLM", "tiny").metric_values["training_run"]
    assert marker == {"experiment_id": run.experiment_id, "state": resume.FINISHED}


def test_a_removal_that_fails_halfway_deletes_nothing(sqlite_db):
    """A pruned checkpoint's rows go in one transaction: when one delete fails, the rows
    deleted before it are back, and the datalayer goes on working."""
    import sqlite3

    from superduper_transformers.store import sql_writes

    before = len(sqlite_db["facts"].select().execute())
    with pytest.raises(sqlite3.Error):  # a value sqlite cannot bind: the second delete fails
        sql_writes.delete_rows(sqlite_db, [("facts", {"_fold": "train"}), ("facts", {"x": {"a": 1}})])
    assert len(sqlite_db["facts"].select().execute()) == before
    assert sql_writes.delete_rows(sqlite_db, [("facts", {"_fold": "valid"})]) > 0
    assert len(sqlite_db["facts"].select().execute()) < before


def test_progress_writes_take_at_most_their_share_of_the_training_time(monkeypatch):
    """A slow datalayer (each progress write 0.25 s) logging every 0.1 s of training: the
    writes are spaced so that they take at most 2% of the time, not one per second (which
    would have cost the training 25% of its speed). A fake clock: nothing is timed."""
    import types

    from superduper_transformers.launch import progress

    clock = {"now": 1000.0}
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(time=lambda: clock["now"]))
    writes = []

    class SlowDb:
        def load(self, *a, **k):
            return types.SimpleNamespace(progress=None)

        def apply(self, run, **k):
            writes.append(run.progress["step"])
            clock["now"] += 0.25

    callback = progress.ProgressCallback("m", "run", db=SlowDb(), min_interval_s=1.0)
    state = types.SimpleNamespace(
        global_step=0, max_steps=1000, epoch=0.0, is_world_process_zero=True, train_batch_size=8
    )
    callback.on_train_begin(None, state, None)
    start = clock["now"]
    for step in range(1, 1001):  # 100 s of training, a log every step
        clock["now"] += 0.1
        state.global_step = step
        callback.on_log(None, state, None, logs={"loss": 1.0 / step})
    callback.on_train_end(None, state, None)
    spent = 0.25 * len(writes)
    assert spent <= 0.02 * (clock["now"] - start) + 3 * 0.25  # + the first, the first log, the last
    assert len(writes) >= 5 and writes[-1] == 1000  # still updated along the way, and at the end
    gaps = [b - a for a, b in zip(writes[2:-1], writes[3:-1])]
    assert gaps and min(gaps) >= 100  # >= 12.5 s apart (0.25 s / 2%), at 0.1 s per step
