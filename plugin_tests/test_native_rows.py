"""Rows read through the backend's own cursor (store/native_rows.py) are the rows that
superduper's decoded query gives, on SQLite and mongomock; other queries keep its path."""

from __future__ import annotations

import pytest

from superduper_transformers.store import native_rows
from superduper_transformers.store.rows import FoldRows


def _rows(n):
    conversation = [{"role": "user", "content": 'say "hi"'}, {"role": "assistant", "content": "hi"}]
    return [
        {"x": f"{i}+1=", "y": str(i + 1), "m": conversation, "_fold": "valid" if i % 4 == 0 else "train"}
        for i in range(n)
    ]


@pytest.fixture(params=["sqlite", "mongomock"])
def table_db(request, tmp_path, artifact_store):
    from superduper import Table, superduper

    uri = f"sqlite:///{tmp_path}/rows.db" if request.param == "sqlite" else f"mongomock://rows{id(tmp_path)}"
    db = superduper(uri, force_apply=True)
    db.apply(Table("docs", fields={"x": "str", "y": "str", "m": "json", "_fold": "str"}), force=True)
    db["docs"].insert(_rows(23))
    return db


def _read(db, select, fold, keys, native):
    pages = list(FoldRows(db, select, fold, keys, page_size=5, native=native).pages())
    assert all(len(p) <= 5 for p in pages)
    return sorted((r for p in pages for r in p), key=repr)


@pytest.mark.parametrize("fold", ["train", "valid", None])
@pytest.mark.parametrize("keys", [["x", "y"], ["m"], ["x", "nope"]])
def test_native_rows_are_the_rows_superduper_decodes(table_db, fold, keys):
    select = table_db["docs"].select()
    native = native_rows.native_pages(table_db, select, fold, keys)
    assert (native is None) == ("nope" in keys)  # a key that is no column: superduper's path
    expected = _read(table_db, select, fold, keys, native=False)
    assert _read(table_db, select, fold, keys, native=True) == expected
    assert len(expected) == {"train": 17, "valid": 6, None: 23}[fold]


def test_a_filtered_query_is_read_by_superduper(table_db):
    select = table_db["docs"].select().filter(table_db["docs"]["x"] == "1+1=")
    assert native_rows.native_pages(table_db, select, "train", ["x", "y"]) is None
    assert _read(table_db, select, "train", ["x", "y"], native=True) == [{"x": "1+1=", "y": "2"}]


def test_mongomock_rows_are_read_in_one_pass(tmp_path, artifact_store, monkeypatch):
    """mongomock's ``Cursor.__next__`` copies the remaining results on each call (n rows:
    n²/2 copies, 2.8k rows/s at 40k rows); the native read takes its result list once."""
    import mongomock
    from superduper import Table, superduper

    db = superduper(f"mongomock://linear{id(tmp_path)}", force_apply=True)
    db.apply(Table("docs", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db.databackend._backend._database["docs"].insert_many(
        [{"x": f"{i}+1=", "y": str(i + 1), "_fold": "train"} for i in range(300)]
    )
    nexts = []
    original = mongomock.collection.Cursor.__next__

    def counted(cursor):
        nexts.append(cursor.collection.name)
        return original(cursor)

    monkeypatch.setattr(mongomock.collection.Cursor, "__next__", counted)
    rows = [
        r for p in FoldRows(db, db["docs"].select(), "train", ["x", "y"], page_size=64).pages() for r in p
    ]
    assert rows == [{"x": f"{i}+1=", "y": str(i + 1)} for i in range(300)]  # every row, inserted order
    # (superduper's own reads of its metadata still go through it)
    assert nexts.count("docs") == 0, f"{nexts.count('docs')} calls of Cursor.__next__ on the rows"
