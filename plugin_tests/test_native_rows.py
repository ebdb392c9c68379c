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
