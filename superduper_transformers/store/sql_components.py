"""A new component's row written as superduper's apply writes it, in one transaction, on SQLite.

superduper's apply of a component that does not exist yet (a checkpoint at each save, a
run's record, the first ``Promotions`` or ``DatabaseIdentity`` row) costs ~40 SQL
statements and ~40 ms of CPU on SQLite: it loads the component to find it absent, reads
the table descriptions through ibis before every insert, and inserts through a pandas
frame and a temporary table. The row it ends up with is plain data: the component's
``dict()`` encoded by superduper (files and blobs saved to the artifact store by
superduper's own ``_save_artifact``, JSON fields encoded by the data backend's own
encoder), status ``pending``, version 0, plus one ``ArtifactRelations`` row per artifact.
:func:`insert_new` writes exactly that with two ``INSERT`` statements.

It writes only what superduper's apply would merely insert: a component with no row of
that identifier, no child components, services, jobs or table events. The first of its
class has superduper create the class's table first (``db.metadata.create``, as its apply
does). Anything else (a new version, a class registered under another import path,
another backend) returns False and the caller applies through superduper.
"""

from __future__ import annotations

import json
import sqlite3
import typing as t
import uuid

from superduper_transformers.store import sql_writes
from superduper_transformers.store.native_rows import sql_identifier

if t.TYPE_CHECKING:
    from superduper import Component
    from superduper.base.datalayer import Datalayer

#: What superduper's encoding adds to a row and its insert drops.
_NOT_COLUMNS = ("_path", "_builds", "_blobs", "_files")


def _plain(component: Component) -> bool:
    """Whether superduper's apply of ``component``, when new, only inserts its row."""
    from superduper import Component

    cls = type(component)
    if cls.services or cls.create_jobs is not Component.create_jobs:
        return False
    if cls.create_table_events is not Component.create_table_events:
        return False
    return not any(
        _holds_component(getattr(component, name, None)) for name in component.__dataclass_fields__
    )


def _holds_component(value: t.Any) -> bool:
    from superduper import Component

    if isinstance(value, Component):
        return True
    if isinstance(value, dict):
        return any(_holds_component(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_component(v) for v in value)
    return False


def _registered(
    db: Datalayer, con: sqlite3.Connection, component: Component
) -> t.Optional[t.Tuple[t.Dict, t.List[str]]]:
    """The class's fields (as superduper registered them) and its table's columns, or None
    when superduper registered another class under this name.

    The first component of its class has superduper create the class's table and its
    ``Table`` row first (``metadata.create``, as its apply does before the first insert)."""
    cls = type(component)
    query = 'SELECT path, fields FROM "Table" WHERE identifier = ?'
    try:
        rows = con.execute(query, [cls.__name__]).fetchall()
        if not rows:
            db.metadata.create(cls)
            rows = con.execute(query, [cls.__name__]).fetchall()
        columns = [r[1] for r in con.execute(f"PRAGMA table_info({sql_identifier(cls.__name__)})")]
    except sqlite3.Error:
        return None
    if len(rows) != 1 or rows[0][0] != f"{cls.__module__}.{cls.__name__}" or not columns:
        return None
    return json.loads(rows[0][1] or "{}"), columns


def _exists(con: sqlite3.Connection, table: str, identifier: str) -> bool:
    query = f"SELECT 1 FROM {sql_identifier(table)} WHERE identifier = ? LIMIT 1"
    return con.execute(query, [identifier]).fetchone() is not None


def _encoded_row(db: Datalayer, component: Component, fields: t.Dict) -> t.Tuple[t.Dict, t.List[str]]:
    """The row superduper's apply inserts for ``component`` (new: version 0, pending),
    and the artifact ids it relates to it; its files and blobs are saved to the store."""
    from superduper.base.schema import Schema
    from superduper.base.status import pending_status

    component.db = db
    component.version = 0
    component.status, component.details = pending_status()
    encoded = db._save_artifact(component.dict().encode())
    artifact_ids, _ = db._find_artifacts(encoded)
    row = {k: v for k, v in encoded.items() if k not in _NOT_COLUMNS}
    row = db.databackend._encode_document_fields(row, Schema.build(**fields))
    # superduper-sql drops the columns a row leaves empty (pandas' dropna): they stay NULL
    return {k: v for k, v in row.items() if v is not None}, artifact_ids


def insert_new(db: Datalayer, component: Component) -> bool:
    """Write the new ``component`` as superduper's apply would, with two ``INSERT`` statements.

    :param db: The datalayer.
    :param component: A component built in this process (never loaded: no version yet).
    :return: True when its rows are written; False when this cannot write it as
        superduper would (another backend, its identifier already stored, its class
        registered under another import path, child components): no row is written
        then, and the caller applies it through superduper.
    """
    con = sql_writes.writable_connection(db)
    if con is None or component.version is not None or not _plain(component):
        return False
    name = type(component).__name__
    registered = _registered(db, con, component)
    if registered is None or _exists(con, name, component.identifier):
        return False
    fields, columns = registered
    row, artifact_ids = _encoded_row(db, component, fields)
    if set(row) - set(columns) or not all(isinstance(v, (str, int, float, bytes)) for v in row.values()):
        component.version = None  # as built: superduper's apply decides it
        return False  # a field the table lacks (superduper migrates or drops it), or an odd value
    relations = [
        {
            "relation_id": str(uuid.uuid4()),
            "component": name,
            "identifier": component.identifier,
            "uuid": component.uuid,
            "artifact_id": artifact_id,
        }
        for artifact_id in artifact_ids
    ]
    with sql_writes.transaction(con):
        # Under the write lock: another process may have written it since the check above.
        if _exists(con, name, component.identifier):
            component.version = None
            return False
        _insert(con, name, row)
        for relation in relations:
            _insert(con, "ArtifactRelations", relation)
    return True


def _insert(con: sqlite3.Connection, table: str, row: t.Mapping[str, t.Any]) -> None:
    con.execute(sql_writes.insert_statement(table, list(row)), list(row.values()))


def apply_new(db: Datalayer, component: Component) -> None:
    """Store ``component``: :func:`insert_new` when it can, else superduper's apply.

    :param db: The datalayer.
    :param component: The component to store (``force=True, jobs=False`` on the fallback).
    """
    if not insert_new(db, component):
        db.apply(component, force=True, jobs=False)
