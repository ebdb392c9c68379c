"""Upgrading a SQLite database written before `data_fingerprint` / `on_data_change` /
`objective` existed (the last: the release before the training plan and objectives).

The "old" database is built faithfully: the current tables, with an old-style run and
trainer recorded, then the new columns dropped (``ALTER TABLE ... DROP COLUMN``) and their
entries removed from superduper's stored table descriptions (``Table.fields``).
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from plugin_tests import fixtures
from superduper_transformers import resume
from superduper_transformers.checkpoint import Checkpoint, list_checkpoints
from superduper_transformers.cli.query import progress_line
from superduper_transformers.model import LLM
from superduper_transformers.store.datalayer import migrate_component_tables
from superduper_transformers.trainer import LLMTrainer

CLASSES = (LLM, LLMTrainer, Checkpoint, resume.TrainingRun)
NEW_FIELDS = [
    ("TrainingRun", "data_fingerprint"),
    ("TrainingRun", "progress"),
    ("Checkpoint", "data_fingerprint"),
    ("LLMTrainer", "on_data_change"),
    ("LLMTrainer", "objective"),
]
TRAINING = dict(max_steps=20, save_steps=10, eval_steps=10)

pytestmark = pytest.mark.skipif(
    sqlite3.sqlite_version_info < (3, 35), reason="ALTER TABLE DROP COLUMN needs SQLite >= 3.35"
)


def _open(path):
    from superduper import superduper

    return superduper(f"sqlite:///{path}", force_apply=True)


def _schema(path):
    """``{table: [(column, type)]}`` and ``{table: [stored fields]}`` of the component tables."""
    con = sqlite3.connect(path)
    try:
        columns = {
            t: [(r[1], r[2]) for r in con.execute(f'PRAGMA table_info("{t}")')]
            for t, _ in NEW_FIELDS + [("LLM", "")]
        }
        stored = {
            name: sorted(json.loads(fields))
            for name, fields in con.execute('SELECT identifier, fields FROM "Table"')
            if name in columns
        }
    finally:
        con.close()
    return columns, stored


@pytest.fixture
def old_db_path(tmp_path, artifact_store):
    """A SQLite file as the release before lineage left it, with an old run and trainer."""
    path = tmp_path / "old.db"
    db = _open(path)
    fixtures.insert_rows(db)
    for cls in CLASSES:
        db.metadata.create(cls)
    db.apply(
        resume.TrainingRun("old-run", model="old", experiment_id="old-run", state="finished"), force=True
    )
    db.apply(LLMTrainer("old-trainer", key=("x", "y"), select=db["facts"].select()), force=True)
    db.disconnect()

    con = sqlite3.connect(path)
    for table, column in NEW_FIELDS:
        con.execute(f'ALTER TABLE "{table}" DROP COLUMN "{column}"')
        for uuid, fields in con.execute(
            'SELECT uuid, fields FROM "Table" WHERE identifier = ?', (table,)
        ).fetchall():
            fields = json.loads(fields)
            del fields[column]
            con.execute('UPDATE "Table" SET fields = ? WHERE uuid = ?', (json.dumps(fields), uuid))
    con.commit()
    con.close()
    columns, stored = _schema(path)
    assert (
        "data_fingerprint" not in dict(columns["TrainingRun"])
        and "on_data_change" not in stored["LLMTrainer"]
    )
    return path


def test_an_old_database_cannot_record_a_training_without_the_migration(
    old_db_path, tiny_model_dir, monkeypatch
):
    import superduper_transformers.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "migrate_component_tables", lambda db, classes: {})
    db = _open(old_db_path)
    with pytest.raises(
        Exception, match="Unconsumed column names: (data_fingerprint|on_data_change|objective)"
    ):
        db.apply(fixtures.make_llm(db, tiny_model_dir, **TRAINING), force=True)


def test_the_migration_lets_an_old_database_record_runs_and_checkpoints(
    old_db_path, tiny_model_dir, tmp_path
):
    db = _open(old_db_path)
    db.apply(fixtures.make_llm(db, tiny_model_dir, **TRAINING), force=True)

    # The added columns are the ones superduper-sql gives a fresh table.
    fresh = tmp_path / "fresh.db"
    fresh_db = _open(fresh)
    for cls in CLASSES:
        fresh_db.metadata.create(cls)
    migrated_columns, migrated_stored = _schema(old_db_path)
    fresh_columns, fresh_stored = _schema(fresh)
    for table, _ in NEW_FIELDS:
        assert dict(migrated_columns[table]) == dict(fresh_columns[table]), table
        assert migrated_stored[table] == fresh_stored[table], table

    # In a fresh datalayer: the new run and its checkpoints carry their fingerprint ...
    db = _open(old_db_path)
    rows = db["TrainingRun"].filter(db["TrainingRun"]["model"] == "tiny").select("identifier").execute()
    (run,) = [db.load("TrainingRun", r["identifier"]) for r in rows]
    assert run.state == resume.FINISHED
    assert run.data_fingerprint["train_rows"] == len(fixtures.FACTS)
    assert (run.progress["step"], run.progress["max_steps"], run.progress["phase"]) == (20, 20, "ended")
    checkpoints = [db.load("Checkpoint", r["identifier"]) for r in list_checkpoints(db, "tiny")]
    assert len(checkpoints) == 2 and all(c.data_fingerprint == run.data_fingerprint for c in checkpoints)
    assert db.load("LLMTrainer", "tiny-trainer").on_data_change == "warn"
    # ... and the rows written before the upgrade load, the new fields at their defaults.
    old_run = db.load("TrainingRun", "old-run")
    assert (old_run.state, old_run.data_fingerprint, old_run.progress) == ("finished", {}, {})
    assert progress_line(old_run) == "no progress recorded"  # what `status`/`runs` show
    assert db.load("LLMTrainer", "old-trainer").on_data_change == "warn"

    # Migrating again changes nothing.
    before = _schema(old_db_path)
    assert migrate_component_tables(db, CLASSES) == {}
    assert migrate_component_tables(db, CLASSES) == {}
    assert _schema(old_db_path) == before


def test_the_migration_adds_only_what_is_missing_and_is_idempotent(old_db_path):
    db = _open(old_db_path)
    assert migrate_component_tables(db, CLASSES) == {
        "LLMTrainer": ["objective", "on_data_change"],
        "Checkpoint": ["data_fingerprint"],
        "TrainingRun": ["data_fingerprint", "progress"],
    }
    after = _schema(old_db_path)
    assert migrate_component_tables(db, CLASSES) == {}
    assert _schema(old_db_path) == after

    # A column added by hand (or a migration cut off after its first step): only the
    # stored description is completed.
    con = sqlite3.connect(old_db_path)
    (uuid, fields) = con.execute(
        'SELECT uuid, fields FROM "Table" WHERE identifier = ?', ("TrainingRun",)
    ).fetchone()
    con.execute(
        'UPDATE "Table" SET fields = ? WHERE uuid = ?',
        (json.dumps({k: v for k, v in json.loads(fields).items() if k != "data_fingerprint"}), uuid),
    )
    con.commit()
    con.close()
    assert migrate_component_tables(_open(old_db_path), CLASSES) == {"TrainingRun": ["data_fingerprint"]}
    assert _schema(old_db_path) == after


def test_the_migration_does_nothing_on_mongomock(db):
    assert migrate_component_tables(db, CLASSES) == {}


def test_applying_a_loop_adds_the_fields_an_older_loop_table_lacks(tmp_path, artifact_store):
    """A SQLite file with a ``Loop`` table from before ``replay_table``: the next apply of a
    Loop migrates it first (superduper-sql would refuse the row), even one refused later."""
    from superduper_transformers.loop import Loop, LoopError

    path = tmp_path / "loops.db"
    db = _open(path)
    db.metadata.create(Loop)
    db.disconnect()
    con = sqlite3.connect(path)
    con.execute('ALTER TABLE "Loop" DROP COLUMN "replay_table"')
    (uuid, fields) = con.execute(
        'SELECT uuid, fields FROM "Table" WHERE identifier = ?', ("Loop",)
    ).fetchone()
    fields = {k: v for k, v in json.loads(fields).items() if k != "replay_table"}
    con.execute('UPDATE "Table" SET fields = ? WHERE uuid = ?', (json.dumps(fields), uuid))
    con.commit()
    con.close()

    db = _open(path)
    loop = Loop("l", model="nobody", table="facts", validation_table="facts", metric="m:f")
    with pytest.raises(LoopError, match="nobody"):
        db.apply(loop, force=True)
    con = sqlite3.connect(path)
    columns = [r[1] for r in con.execute('PRAGMA table_info("Loop")')]
    (fields,) = con.execute('SELECT fields FROM "Table" WHERE identifier = ?', ("Loop",)).fetchone()
    con.close()
    assert "replay_table" in columns and "replay_table" in json.loads(fields)
