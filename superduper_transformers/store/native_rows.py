"""Pages of a fold read through the backend's own cursor, where the selection allows it.

superduper decodes every row it returns into a ``Document`` (~20k rows/s); a trainer
only needs a few text columns. For a plain ``select()`` of one table whose key columns
are text (``str``) or JSON (``json``: lists of messages), the same rows are read here
with a projection on those columns and the ``_fold`` filter:

- SQLite (superduper-sql): through the backend's own ``sqlite3`` connection, in pages by
  ``rowid`` (keyset: each page is a short statement, no lock is held between pages, and
  no ``OFFSET`` re-scan); JSON columns hold JSON text and are parsed here.
- MongoDB / mongomock: ``find`` with the filter and a projection, one cursor read in
  batches (on mongomock, its result list: see :func:`_documents`).

Anything else (another query, another backend, a column of another type, a key that is
not a column) returns None and is read through superduper's decoded path.
"""

from __future__ import annotations

import json
import typing as t

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Field types read as they are stored (text), and those stored as JSON text in SQL.
_TEXT, _JSON = ("str", "string"), ("json",)


def sql_identifier(name: str) -> str:
    """``name`` as a SQL identifier: between double quotes, each ``"`` in it doubled.

    Column and table names come from the user (a trainer's ``key``, the table): quoted
    this way, a name such as ``x" FROM other --`` is one (missing) column, not SQL.
    """
    return '"' + str(name).replace('"', '""') + '"'


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal: between single quotes, each ``'`` doubled."""
    return "'" + str(value).replace("'", "''") + "'"


Pages = t.Callable[[int], t.Iterator[t.List[t.Dict[str, t.Any]]]]


def native_pages(db: Datalayer, select, fold: t.Optional[str], keys: t.Optional[t.Sequence[str]]):
    """A function ``page_size -> iterator of pages`` reading the fold natively, or None.

    :param db: The datalayer.
    :param select: The trainer's ``select``; only ``<table>.select()`` is read natively.
    :param fold: ``"train"``, ``"valid"`` or None (every row).
    :param keys: The columns to read (None: all, which is left to superduper).
    """
    if not keys or str(select) != f"{select.table}.select()":
        return None
    try:
        fields = {k: str(v) for k, v in db.load("Table", select.table).fields.items()}
    except Exception:  # noqa: BLE001 (no record of the table: superduper's path says what is wrong)
        return None
    if any(fields.get(k) not in _TEXT + _JSON for k in keys):
        return None  # a missing column or another type: superduper decodes (and the checks name it)
    kind, backend = native_backend(db)
    json_keys = [k for k in keys if fields[k] in _JSON]
    if kind == "sqlite":
        return lambda size: _sqlite_pages(backend, select.table, fold, list(keys), json_keys, size)
    if kind in ("mongodb", "mongomock"):
        return lambda size: _mongo_pages(backend._database[select.table], fold, list(keys), size)
    return None


def native_backend(db: Datalayer) -> t.Tuple[str, t.Any]:
    """``("sqlite" | "mongodb" | "mongomock", backend)`` where this package reads natively
    (superduper-sql's ``sqlite3`` connection, pymongo's database), else ``("", None)``."""
    cfg = getattr(db, "cfg", None)  # None: a stand-in for a datalayer (tests)
    if cfg is None:
        return "", None
    uri = str(cfg.data_backend)
    backend = getattr(db.databackend, "_backend", db.databackend)
    if uri.startswith("sqlite://") and hasattr(backend, "connection_manager"):
        return "sqlite", backend
    if uri.startswith(("mongodb://", "mongodb+srv://", "mongomock://")) and hasattr(backend, "_database"):
        return ("mongomock" if uri.startswith("mongomock://") else "mongodb"), backend
    return "", None


def _sqlite_pages(backend, table, fold, keys, json_keys, size):
    columns = ", ".join(sql_identifier(k) for k in keys)
    where = f"{sql_identifier('_fold')} = ? AND " if fold is not None else ""
    statement = (
        f"SELECT rowid, {columns} FROM {sql_identifier(table)} WHERE {where}rowid > ? ORDER BY rowid LIMIT ?"
    )
    positions = [keys.index(k) for k in json_keys]
    last = -(2**63)
    while True:
        with backend.connection_manager.get_connection() as conn:
            params = ((fold,) if fold is not None else ()) + (last, size)
            rows = conn.con.execute(statement, params).fetchall()
        if not rows:
            return
        last = rows[-1][0]
        page = []
        for row in rows:
            values = list(row[1:])
            for i in positions:
                if values[i] is not None:
                    values[i] = json.loads(values[i])
            page.append(dict(zip(keys, values)))
        yield page
        if len(rows) < size:
            return


def _mongo_pages(collection, fold, keys, size):
    query = {"_fold": fold} if fold is not None else {}
    page = []
    for doc in _documents(collection.find(query, {k: 1 for k in keys}, batch_size=size)):
        if all(k in doc for k in keys):
            page.append({k: doc[k] for k in keys})
        else:  # the whole row, so that the data checks name the columns it has
            full = collection.find_one({"_id": doc["_id"]})
            page.append({**full, "_id": str(full["_id"])})
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


def _documents(cursor) -> t.Iterator[t.Dict[str, t.Any]]:
    """The documents of ``cursor``, in its order.

    A pymongo cursor is iterated as it is (batches of ``batch_size``). mongomock 4.3's
    ``Cursor.__next__`` copies the list of the remaining results on every call, which makes
    reading n rows cost n²/2 copies (15k rows/s at 10k rows, 2.8k at 40k); its other read
    paths go through it too (``aggregate`` iterates a ``find()``, ``find_raw_batches`` is
    not implemented). The list it indexes into is computed once and read here instead.
    """
    results = getattr(cursor, "_compute_results", None)
    if results is not None and type(cursor).__module__.startswith("mongomock."):
        return iter(results(with_limit_and_skip=True))
    return cursor
