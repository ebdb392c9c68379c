"""The few writes of a checkpoint save, made through SQLite's own connection on a SQLite db.

superduper-sql's ``update`` and ``delete`` reflect the schema of every table of the
database before each statement (sqlalchemy's ``MetaData.reflect``): about 14 statements
per table, so moving one pointer cost ~170 statements in a database of 12 tables, and a
checkpoint's teardown three times that, more with every table a user adds. On a SQLite
datalayer (superduper-sql, ``sqlite://``) the same rows are written here, one statement
each, in one transaction. Anywhere else (MongoDB, another SQL database) each function
returns None and the caller writes through superduper.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import typing as t
import uuid

from superduper_transformers.store.native_rows import native_backend, sql_identifier

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: ``(table, {column: value})``: the rows of ``table`` whose columns hold these values.
Rows = t.Tuple[str, t.Mapping[str, t.Any]]


def _sqlite(db: Datalayer) -> t.Optional[sqlite3.Connection]:
    """The datalayer's own ``sqlite3`` connection (this thread's), or None on another backend."""
    kind, backend = native_backend(db)
    if kind != "sqlite":
        return None
    with backend.connection_manager.get_connection() as conn:
        con = getattr(conn, "con", None)
    return con if isinstance(con, sqlite3.Connection) else None


def writable_connection(db: Datalayer) -> t.Optional[sqlite3.Connection]:
    """The connection, when no transaction is open on it (none of ours is nested in another)."""
    con = _sqlite(db)
    return None if con is None or con.in_transaction else con


@contextlib.contextmanager
def transaction(con: sqlite3.Connection) -> t.Iterator[sqlite3.Connection]:
    # IMMEDIATE: the write lock is taken before the first read, so two processes
    # never interleave their statements (the second waits, up to the busy timeout).
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _where(match: t.Mapping[str, t.Any]) -> t.Tuple[str, t.List[t.Any]]:
    clause = " AND ".join(f"{sql_identifier(k)} = ?" for k in match)
    return clause, list(match.values())


def update_column(
    db: Datalayer, table: str, column: str, value: t.Any, match: t.Mapping[str, t.Any]
) -> t.Optional[int]:
    """Set ``column`` to ``value`` in the rows of ``table`` that ``match``, in one statement.

    :param db: The datalayer.
    :param table: A table (or a component's metadata table, e.g. ``LLM``).
    :param column: The column to set; ``value`` is stored as given (text, number).
    :param match: ``{column: value}`` selecting the rows.
    :return: how many rows changed; None on a backend this module does not write (the
        caller writes through superduper then).
    """
    return update_columns(db, table, {column: value}, match)


def update_columns(
    db: Datalayer, table: str, values: t.Mapping[str, t.Any], match: t.Mapping[str, t.Any]
) -> t.Optional[int]:
    """Set several columns of the rows of ``table`` that ``match``, in one statement.

    :param db: The datalayer.
    :param table: A table (or a component's metadata table, e.g. ``TrainingRun``).
    :param values: ``{column: value}``, each stored as given (text, number).
    :param match: ``{column: value}`` selecting the rows.
    :return: how many rows changed; None on a backend this module does not write.
    """
    con = writable_connection(db)
    if con is None:
        return None
    where, params = _where(match)
    assignments = ", ".join(f"{sql_identifier(k)} = ?" for k in values)
    with transaction(con):
        cursor = con.execute(
            f"UPDATE {sql_identifier(table)} SET {assignments} WHERE {where}", [*values.values(), *params]
        )
    return cursor.rowcount


def insert_row(
    db: Datalayer, table: str, row: t.Mapping[str, t.Any], json_columns: t.Sequence[str] = ()
) -> t.Optional[str]:
    """Insert ``row`` into the data table ``table`` as superduper-sql stores it: ``json``
    columns as JSON text, a random ``id`` (its primary id). No change triggers run.

    :param json_columns: The columns of type ``json``.
    :return: the row's id; None on a backend this module does not write.
    """
    from superduper.components.table import DEFAULT_PRIMARY_ID

    stored = {k: json.dumps(v) if k in json_columns else v for k, v in row.items()}
    stored.setdefault(DEFAULT_PRIMARY_ID, str(uuid.uuid4()))
    if insert_rows(db, table, list(stored), [tuple(stored.values())]) is None:
        return None
    return stored[DEFAULT_PRIMARY_ID]


def insert_rows(
    db: Datalayer, table: str, columns: t.Sequence[str], rows: t.Sequence[t.Sequence[t.Any]]
) -> t.Optional[int]:
    """Insert ``rows`` (values in ``columns`` order, stored as given) in one statement and
    one transaction. No change triggers run.

    :return: how many rows were inserted; None on a backend this module does not write.
    """
    con = writable_connection(db)
    if con is None:
        return None
    with transaction(con):
        con.executemany(insert_statement(table, columns), rows)
    return len(rows)


def insert_statement(table: str, columns: t.Sequence[str]) -> str:
    """``INSERT INTO table (columns) VALUES (?, ...)``, names quoted."""
    names = ", ".join(sql_identifier(k) for k in columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {sql_identifier(table)} ({names}) VALUES ({marks})"


def table_columns(db: Datalayer, table: str) -> t.Optional[t.Set[str]]:
    """The column names of ``table`` (empty when it does not exist); None on another backend."""
    con = _sqlite(db)
    if con is None:
        return None
    return {r[1] for r in con.execute(f"PRAGMA table_info({sql_identifier(table)})")}


def select_rows(
    db: Datalayer, table: str, columns: t.Sequence[str], match: t.Mapping[str, t.Any]
) -> t.Optional[t.List[t.Dict[str, t.Any]]]:
    """The ``columns`` of the rows of ``table`` that ``match``, as stored (nothing decoded).

    :return: the rows (none when the table does not exist); None on a backend this module
        does not read.
    """
    con = _sqlite(db)
    if con is None:
        return None
    if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [table]).fetchone():
        return []
    where, params = _where(match)
    names = ", ".join(sql_identifier(c) for c in columns)
    rows = con.execute(f"SELECT {names} FROM {sql_identifier(table)} WHERE {where}", params).fetchall()
    return [dict(zip(columns, row)) for row in rows]


def delete_rows(db: Datalayer, rows: t.Sequence[Rows]) -> t.Optional[int]:
    """Delete every group of ``rows`` in one transaction: all of them, or none after a crash.

    :param db: The datalayer.
    :param rows: ``(table, {column: value})`` groups; a table the database does not hold is skipped.
    :return: how many rows were deleted; None on a backend this module does not write.
    """
    con = writable_connection(db)
    if con is None:
        return None
    deleted = 0
    with transaction(con):
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, match in rows:
            if table in tables:
                where, params = _where(match)
                deleted += con.execute(f"DELETE FROM {sql_identifier(table)} WHERE {where}", params).rowcount
    return deleted
