"""A listener's reads and writes through the backend's own driver, where superduper's cost more.

superduper's ``Listener.run`` reads the new rows with ``select.subset(ids)`` (every
column, decoded) and writes the outputs with ``db[outputs].insert`` (schema lookups,
encoding; on SQLite an ibis memtable). For a plain ``<table>.select()`` whose key is one
text (``str``) or ``json`` column and outputs of type ``str`` or ``json``, the same rows
are read and written here:

- SQLite (superduper-sql): one ``SELECT`` of the key column by id, one ``INSERT`` of the
  outputs, through the datalayer's own ``sqlite3`` connection.
- MongoDB: ``find`` by ``_id`` ``$in`` the ids (the ``_id`` index); mongomock evaluates
  ``$in`` as a Python list scan for every document, so there the ids' range is read
  (``$gte``/``$lte``) and filtered by a set. ``insert_many`` writes the outputs.

The output rows are the ones superduper writes: ``{<primary id>: id, "_source": id,
<outputs>: value}`` (on MongoDB both ids as ``ObjectId``, as superduper-mongodb stores
them; on SQLite a ``json`` output as ``json.dumps`` text). Anything else returns None and
the caller goes through superduper.
"""

from __future__ import annotations

import json
import typing as t

from superduper_transformers.store import sql_writes
from superduper_transformers.store.native_rows import _JSON, _TEXT, _documents, native_backend, sql_identifier

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Ids per ``IN (...)`` statement (SQLite's host-parameter limit is 999 on old builds).
_CHUNK = 500

#: ``[(primary id, value)]``: a row's id and its key value, or an output.
Pairs = t.List[t.Tuple[str, t.Any]]


def read_inputs(db: Datalayer, select, key: t.Any, ids: t.Sequence[str]) -> t.Optional[Pairs]:
    """The ``key`` value of each row ``ids`` of ``select``'s table, in table order, or None.

    :param db: The datalayer.
    :param select: The listener's ``select``; only ``<table>.select()`` is read here.
    :param key: The listener's key; only one column name is read here.
    :param ids: Primary ids (as superduper hands them to ``Listener.run``: strings).
    :return: ``[(id, value)]`` for the ids found (a row without the column: None, so that
        superduper's path names it); None where superduper reads.
    """
    if not isinstance(key, str) or select is None or str(select) != f"{select.table}.select()":
        return None
    kind, backend = native_backend(db)
    if backend is None:
        return None
    try:
        info = db.metadata.get_component("Table", select.table, version=0)
    except Exception:  # noqa: BLE001 (no record of the table: superduper's path says what is wrong)
        return None
    kind_of_key = str(info.get("fields", {}).get(key))
    if kind_of_key not in _TEXT + _JSON:
        return None
    if kind == "sqlite":
        pid = info.get("primary_id") or "id"
        pairs = _sqlite_read(backend, select.table, pid, key, list(ids))
        if pairs is not None and kind_of_key in _JSON:
            pairs = [(i, json.loads(v) if isinstance(v, str) else v) for i, v in pairs]
        return pairs
    return _mongo_read(backend._database[select.table], key, list(ids), ranged=kind == "mongomock")


def _sqlite_read(backend, table, pid, key, ids) -> t.Optional[Pairs]:
    rows = []
    with backend.connection_manager.get_connection() as conn:
        con = conn.con
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            rows += con.execute(
                f"SELECT rowid, {sql_identifier(pid)}, {sql_identifier(key)} FROM {sql_identifier(table)} "
                f"WHERE {sql_identifier(pid)} IN ({marks})",
                chunk,
            ).fetchall()
    if any(r[2] is None for r in rows):
        return None
    return [(r[1], r[2]) for r in sorted(rows)]


def _mongo_read(collection, key, ids, ranged: bool) -> t.Optional[Pairs]:
    from bson import ObjectId
    from bson.errors import InvalidId

    try:
        oids = [ObjectId(i) for i in ids]
    except (InvalidId, TypeError):
        return None
    if not oids:
        return []
    wanted = set(oids)
    query = {"$gte": min(oids), "$lte": max(oids)} if ranged else {"$in": oids}
    pairs = []
    for doc in _documents(collection.find({"_id": query}, {key: 1})):  # mongomock: no n² copies
        if doc["_id"] in wanted:
            if key not in doc:
                return None
            pairs.append((str(doc["_id"]), doc[key]))
    return pairs


def write_outputs(db: Datalayer, table: str, datatype: t.Any, outputs: Pairs) -> t.Optional[t.List[str]]:
    """Insert ``outputs`` into the outputs table ``table`` as superduper's ``Listener`` does.

    :param db: The datalayer.
    :param table: The listener's outputs table (``listener.outputs``), also the value column.
    :param datatype: The model's ``datatype``; only ``str`` and ``json`` are written here.
    :param outputs: ``[(source id, output)]``.
    :return: the inserted ids (the sources' ids, as superduper returns them); None where
        superduper writes.
    """
    if str(datatype) not in _TEXT + _JSON:
        return None
    kind, backend = native_backend(db)
    if kind == "sqlite":
        return _sqlite_write(db, table, str(datatype) in _JSON, outputs)
    if backend is not None:
        from bson import ObjectId

        docs = [{"_id": ObjectId(i), "_source": ObjectId(i), table: value} for i, value in outputs]
        return [str(i) for i in backend._database[table].insert_many(docs).inserted_ids]
    return None


def _sqlite_write(db, table, as_json, outputs) -> t.Optional[t.List[str]]:
    from superduper.components.table import DEFAULT_PRIMARY_ID

    columns = (DEFAULT_PRIMARY_ID, "_source", table)
    if sql_writes.table_columns(db, table) != set(columns):
        return None  # not the table superduper made for these outputs: it writes (and says why not)
    rows = [(i, i, json.dumps(v) if as_json else v) for i, v in outputs]
    if sql_writes.insert_rows(db, table, columns, rows) is None:
        return None
    return [i for i, _ in outputs]
