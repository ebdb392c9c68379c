"""A new checkpoint, run or promotion record written with one INSERT on SQLite holds exactly
the rows superduper's apply writes, reads back the same, and gives way to superduper's
apply wherever that would do more than insert."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3


def _records(db):
    """A checkpoint (its folder in the store, as a save puts it there), a run and a promotion record."""
    from superduper.base.datatype import FileItem

    from superduper_transformers.checkpoint import Checkpoint
    from superduper_transformers.promote import Promotions
    from superduper_transformers.resume import TrainingRun
    from superduper_transformers.store import artifacts

    folder = os.path.join(artifacts.store_root(db), "ckpt-x", "checkpoint-7")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "adapter.bin"), "wb") as f:
        f.write(b"weights")
    return [
        Checkpoint(
            "m-r-step7",
            path=FileItem(identifier="ckpt-x", path=folder),
            step=7,
            model="m",
            experiment_id="r",
            metrics={"loss": 0.25, "eval_loss": 1.5},
            manifest={"adapter.bin": [7, hashlib.sha256(b"weights").hexdigest()]},
            artifact_id="ckpt-x",
            data_fingerprint={"train": {"rows": 3, "hash": "x"}},
        ),
        TrainingRun(
            "m-run",
            model="m",
            experiment_id="r",
            settings={"learning_rate": 0.001, "bits": None, "packing": True},
            started_at=1.5,
        ),
        Promotions("m", model="m", history=[{"pointer": "in_use", "from": None, "to": "c"}]),
    ]


def _rows(path: str, table: str):
    """Every row of ``table`` as stored, without what differs between two writes of the same
    record (the time in ``details``, the random relation id)."""
    con = sqlite3.connect(path)
    try:
        cursor = con.execute(f'SELECT * FROM "{table}" ORDER BY rowid')
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    finally:
        con.close()
    for row in rows:
        row.pop("relation_id", None)
        if row.get("details"):
            row["details"] = {k: v for k, v in json.loads(row["details"]).items() if k != "last_change_time"}
    return rows


def test_a_new_record_written_with_one_insert_is_the_row_superduper_writes(artifact_store, tmp_path):
    """The same records stored in two SQLite databases, by superduper's apply in one and by
    ``insert_new`` in the other (the first of each class: its table is created too):
    every row of the record tables, of ``ArtifactRelations`` and of superduper's ``Table``
    is the same, and superduper reads them back the same (``db.load``, ``db.show``, the
    stored files). Checkpoint rows read with one SELECT are superduper's query's rows.
    Where superduper's apply would do more than insert (a stored identifier: a new
    version; a loaded record) ``insert_new`` writes nothing and answers False."""
    from superduper import superduper

    from superduper_transformers.checkpoint import _ROW_COLUMNS, list_checkpoints
    from superduper_transformers.resume import TrainingRun
    from superduper_transformers.store import sql_components

    paths = {name: str(tmp_path / f"{name}.sqlite") for name in ("apply", "insert")}
    dbs = {name: superduper(f"sqlite:///{path}", force_apply=True) for name, path in paths.items()}
    for record in _records(dbs["apply"]):
        dbs["apply"].apply(record, force=True, jobs=False)
    for record in _records(dbs["insert"]):
        assert sql_components.insert_new(dbs["insert"], record) is True
    tables = ("Checkpoint", "TrainingRun", "Promotions", "ArtifactRelations", "ParentChildAssociations")
    for table in tables:
        assert _rows(paths["insert"], table) == _rows(paths["apply"], table), table
    assert len(_rows(paths["insert"], "ArtifactRelations")) == 1  # the checkpoint's folder
    registered = {
        name: [{k: v for k, v in r.items() if k != "details"} for r in _rows(path, "Table")]
        for name, path in paths.items()
    }
    assert registered["insert"] == registered["apply"]
    read = {}
    for name, db in dbs.items():
        ckpt = db.load("Checkpoint", "m-r-step7")
        run = db.load("TrainingRun", "m-run")
        record = db.load("Promotions", "m")
        with open(os.path.join(ckpt.local_path, "adapter.bin"), "rb") as f:
            stored = f.read()
        read[name] = (
            db.show("Checkpoint"),
            db.show("Checkpoint", "m-r-step7"),
            (ckpt.uuid, ckpt.step, ckpt.metrics, ckpt.manifest, ckpt.data_fingerprint, stored),
            (run.uuid, run.settings, run.state, run.started_at),
            (record.uuid, record.history),
            list_checkpoints(db, "m", "r"),
        )
    assert read["insert"] == read["apply"]
    table = dbs["apply"]["Checkpoint"]
    assert read["insert"][-1] == [
        dict(r) for r in table.filter(table["model"] == "m").select(*_ROW_COLUMNS).execute()
    ]
    assert read["insert"][-1][0]["metrics"] == {"loss": 0.25, "eval_loss": 1.5}

    db = dbs["insert"]
    again = TrainingRun("m-run", model="m", experiment_id="r2", started_at=2.0)
    assert sql_components.insert_new(db, again) is False
    assert again.version is None  # left for superduper's apply to decide
    assert sql_components.insert_new(db, db.load("TrainingRun", "m-run")) is False
    assert db.show("TrainingRun", "m-run") == [0]
    assert db.load("TrainingRun", "m-run").experiment_id == "r"
    for db in dbs.values():
        db.disconnect()
