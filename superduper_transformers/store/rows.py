"""The rows of a trainer's ``select``, read from the datalayer page by page.

A training table can be larger than the memory of the process that trains: the rows
are never gathered into one Python list. :class:`FoldRows` reads one fold
(``_fold == 'train'`` / ``'valid'``) with the query's own ``limit(n, offset=k)``, which
superduper 0.10 runs natively on every backend (MongoDB ``skip``/``limit``, SQL
``LIMIT``/``OFFSET``), and can be read as often as needed (fingerprint, then
tokenization). Rows are projected on the trainer's ``key`` columns as they arrive.

Paging by offset assumes nobody writes to the table while it is read; rows written
meanwhile may be missed or read twice (the data fingerprint then tells).
"""

from __future__ import annotations

import typing as t

from superduper_transformers.store.native_rows import native_pages, sql_identifier, sql_string

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Rows per page: large enough that SQL ``OFFSET`` re-scans stay cheap, small enough
#: that a page of short texts is a few MB.
DEFAULT_PAGE_SIZE = 5000


class MissingTableError(ValueError):
    """The ``select`` reads a table that is not in the database."""


def check_table(db: Datalayer, select) -> None:
    """Raise :class:`MissingTableError` (naming the table and the fix) if ``select``'s table is missing."""
    tables = db.show("Table")
    if select.table not in tables:
        raise MissingTableError(
            f"`select` reads the table `{select.table}`, which is not in the database (tables: "
            f"{sorted(t for t in tables if not t[:1].isupper())}). Create it with "
            "`db.apply(Table(...))` and insert the rows, or fix the query."
        )


class FoldRows:
    """The rows of one ``_fold`` of ``select``, read lazily in pages; iterable many times.

    :param db: The datalayer.
    :param select: The trainer's ``select`` query.
    :param fold: ``"train"`` or ``"valid"`` (None: every row of the query).
    :param keys: Columns to keep of each row (None: all). A row lacking one keeps all
        its columns, so the data checks can name what it has.
    :param page_size: Rows per page (default :data:`DEFAULT_PAGE_SIZE`).
    :param native: Read through the backend's cursor where the query allows it
        (False: always through superduper's decoded rows).
    """

    def __init__(
        self,
        db: Datalayer,
        select,
        fold: t.Optional[str],
        keys: t.Optional[t.Sequence[str]] = None,
        page_size: t.Optional[int] = None,
        native: bool = True,
    ):
        page_size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if page_size < 1:
            raise ValueError(f"`page_size` must be positive, got {page_size}.")
        self.db, self.select, self.fold = db, select, fold
        self.keys = list(keys) if keys is not None else None
        self.page_size, self.native = page_size, native
        self._count: t.Optional[int] = None

    @property
    def query(self):
        """The query of this fold (``select`` filtered on ``_fold``)."""
        if self.fold is None:
            return self.select
        return self.select.filter(self.db[self.select.table]["_fold"] == self.fold)

    def _project(self, row) -> t.Dict[str, t.Any]:
        row = dict(row)
        if self.keys is None or not all(k in row for k in self.keys):
            return row
        return {k: row[k] for k in self.keys}

    def pages(self) -> t.Iterator[t.List[t.Dict[str, t.Any]]]:
        """The rows, one page (a list of at most ``page_size`` rows) at a time.

        Read through the backend's own cursor where the selection allows it
        (:mod:`.native_rows`), else through superduper's query.
        """
        native = native_pages(self.db, self.select, self.fold, self.keys) if self.native else None
        pages = native(self.page_size) if native is not None else self._query_pages()
        count = 0
        for page in pages:
            count += len(page)
            yield page
        self._count = count

    def _query_pages(self) -> t.Iterator[t.List[t.Dict[str, t.Any]]]:
        query, offset = self.query, 0
        while True:
            page = [self._project(r) for r in query.limit(self.page_size, offset=offset).execute()]
            if page:
                yield page
            if len(page) < self.page_size:
                break
            offset += self.page_size

    def __iter__(self) -> t.Iterator[t.Dict[str, t.Any]]:
        for page in self.pages():
            yield from page

    def known_count(self, count: int) -> None:
        """Record the number of rows, as counted by a read earlier in this training (the plan)."""
        self._count = count

    def __len__(self) -> int:
        # Counted by reading the pages once (no row is kept), unless already known;
        # superduper asks before `fit` whether there is anything to train on.
        if self._count is None:
            for _ in self.pages():
                pass
        return self._count

    def __bool__(self) -> bool:
        if self._count is not None:
            return self._count > 0
        return bool(self.query.limit(1).execute())

    def __repr__(self) -> str:
        return f"FoldRows({self.query}, page_size={self.page_size})"


class ChainedRows:
    """The rows of several :class:`FoldRows` one after the other: the sources of a mix
    (``LLMTrainer(mix=...)``), read, checked and counted together; :attr:`parts` apart.

    :param parts: The rows of each source, in the mix's order.
    """

    def __init__(self, parts: t.Sequence[FoldRows]):
        self.parts = list(parts)

    def pages(self) -> t.Iterator[t.List[t.Dict[str, t.Any]]]:
        """The pages of every part, in order."""
        for part in self.parts:
            yield from part.pages()

    def __iter__(self) -> t.Iterator[t.Dict[str, t.Any]]:
        for page in self.pages():
            yield from page

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __bool__(self) -> bool:
        return any(bool(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"ChainedRows({self.parts})"


def fold_rows(
    db: Datalayer,
    select,
    fold: t.Optional[str],
    keys: t.Optional[t.Sequence[str]] = None,
    page_size: t.Optional[int] = None,
) -> FoldRows:
    """:class:`FoldRows` of ``select``'s table, after checking that the table exists."""
    check_table(db, select)
    return FoldRows(db, select, fold, keys, page_size)


def sql_source(db: Datalayer, select, fold: t.Optional[str], keys: t.Sequence[str]):
    """``(uri, statement)`` reading the fold with plain SQL, or None when that is not exact.

    Only for a SQL datalayer and a ``select`` of whole rows of one table without filters
    of its own (what superduper's query would run can then be written in SQL here); any
    other query is read through superduper (:class:`FoldRows`).
    """
    uri = str(db.cfg.data_backend)
    if not uri.startswith("sqlite://"):
        return None
    plain = f"{select.table}.select()"
    if str(select) != plain:
        return None
    columns = ", ".join(sql_identifier(k) for k in keys)
    where = f" WHERE {sql_identifier('_fold')} = {sql_string(fold)}" if fold is not None else ""
    return uri, f"SELECT {columns} FROM {sql_identifier(select.table)}{where}"


def json_columns(db: Datalayer, table: str, keys: t.Sequence[str]) -> t.List[str]:
    """The ``keys`` that the table stores as JSON text in SQL (lists of messages)."""
    try:
        fields = db.load("Table", table).fields
    except Exception:  # an older table without a record: all text
        return []
    return [k for k in keys if str(fields.get(k, "str")) not in ("str", "string")]


def mongo_source(db: Datalayer, select, fold: t.Optional[str], keys: t.Sequence[str]):
    """``ray.data.read_mongo`` keywords for the fold, or None (not MongoDB, not a plain
    select, or ``pymongoarrow`` missing: the query's pages are read instead)."""
    import importlib.util

    uri = str(db.cfg.data_backend)
    if not uri.startswith(("mongodb://", "mongodb+srv://")) or str(select) != f"{select.table}.select()":
        return None
    if importlib.util.find_spec("pymongoarrow") is None:
        return None
    from pymongo.uri_parser import parse_uri

    database = parse_uri(uri).get("database")
    if not database:
        return None
    pipeline = [{"$match": {"_fold": fold}}] if fold is not None else []
    pipeline.append({"$project": {"_id": 0, **{k: 1 for k in keys}}})
    return dict(uri=uri, database=database, collection=select.table, pipeline=pipeline)
