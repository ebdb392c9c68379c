"""Data at scale: rows read from the db in pages, tokenized in batches, cached by fingerprint."""

from __future__ import annotations

import os
import time

import pytest

from plugin_tests import fixtures
from superduper_transformers import lineage
from superduper_transformers.checkpoint import list_checkpoints
from superduper_transformers.hf import data
from superduper_transformers.store import rows as store_rows

LONG = ("1+" * 40 + "1=", "41")  # longer than max_length=24: its prompt loses its start
CHAT = [
    {"role": "system", "content": "Add."},
    {"role": "user", "content": "2+2="},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "3+3="},
    {"role": "assistant", "content": "6" * 30},  # past max_length: the end is lost
]


@pytest.fixture
def tokenizer(tiny_model_dir):
    from superduper_transformers.hf.loading import load_tokenizer

    return load_tokenizer({"pretrained_model_name_or_path": tiny_model_dir})


@pytest.fixture(autouse=True)
def data_cache(tmp_path, monkeypatch):
    """A fresh tokenized-data cache for each test."""
    path = str(tmp_path / "data_cache")
    monkeypatch.setenv(data.CACHE_ENV, path)
    return path


def _insert_long_row(db):
    db["facts"].insert([{"x": LONG[0], "y": LONG[1], "_fold": "train"}])


def _examples(ds):
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("backend", ["mongomock", "sqlite"])
def test_paged_rows_tokenize_exactly_as_the_in_memory_path(backend, request, tokenizer, caplog_loguru):
    db = request.getfixturevalue("db" if backend == "mongomock" else "sqlite_db")
    _insert_long_row(db)
    pages = store_rows.fold_rows(db, db["facts"].select(), "train", ["x", "y"], page_size=5)
    assert [len(p) for p in pages.pages()] == [5] * 6 + [3]  # 33 rows, never one list
    in_memory = [{"x": x, "y": y} for x, y in fixtures.FACTS] + [{"x": LONG[0], "y": LONG[1]}]
    assert sorted(map(str, pages)) == sorted(map(str, in_memory))

    settings = dict(X="x", y="y", max_length=24, prompt_template="Q: {input}")
    streamed = data.build_dataset(tokenizer, pages, **settings)
    expected = sorted(map(str, (data.tokenize(tokenizer, r, **settings) for r in in_memory)))
    assert sorted(map(str, _examples(streamed))) == expected
    assert any("1 of 33 rows are longer than max_seq_length=24" in m for m in caplog_loguru)
    # the truncated row kept its completion and EOS
    (long_row,) = [e for e in _examples(streamed) if len(e["input_ids"]) == 24]
    assert [t for t in long_row["labels"] if t != data.IGNORE_INDEX][-1] == tokenizer.eos_token_id


def test_chat_rows_batched_are_the_rows_tokenized_one_by_one(db, tokenizer, caplog_loguru):
    from superduper import Table

    db.apply(Table("chats", fields={"m": "json", "_fold": "str"}), force=True)
    db["chats"].insert([{"m": CHAT, "_fold": "train"}, {"m": CHAT[:3], "_fold": "train"}])
    pages = store_rows.fold_rows(db, db["chats"].select(), "train", ["m"], page_size=1)
    streamed = data.build_dataset(tokenizer, pages, "m", None, max_length=150)
    one_by_one = [data.tokenize(tokenizer, {"m": m}, "m", None, max_length=150) for m in (CHAT, CHAT[:3])]
    assert _examples(streamed) == one_by_one
    assert any("1 of 2 rows are longer" in m and "1 lost their end" in m for m in caplog_loguru)
    # labels only on the assistant turns
    assert data.IGNORE_INDEX in one_by_one[1]["labels"]


def test_fingerprint_built_page_by_page_equals_the_whole(db):
    pages = store_rows.fold_rows(db, db["facts"].select(), "train", ["x", "y"], page_size=7)
    fp = lineage.DataFingerprint("q", 64, "{input}", False)
    for page in pages.pages():
        fp.add_train(page)
    whole = lineage.data_fingerprint(
        "q", [{"x": x, "y": y} for x, y in fixtures.FACTS], {}, 64, "{input}", False
    )
    assert fp.result() == whole
    assert whole["train_rows"] == 32 and whole["hash"] == lineage.HASH_METHOD


def test_fit_reads_pages_and_a_second_fit_reuses_the_tokenized_cache(
    db, tiny_model_dir, monkeypatch, data_cache
):
    from superduper.components.model import Model

    from superduper_transformers.store.rows import FoldRows

    def no_lists(*args, **kwargs):
        raise AssertionError("superduper gathered the rows into a list")

    monkeypatch.setattr(Model, "_create_dataset", no_lists)
    monkeypatch.setattr(store_rows, "DEFAULT_PAGE_SIZE", 10)
    pages_read = []
    pages = FoldRows.pages

    def counting(self):
        for page in pages(self):
            pages_read.append(len(page))
            yield page

    monkeypatch.setattr(FoldRows, "pages", counting)
    encoded = []
    encode_table = data.encode_table
    monkeypatch.setattr(
        data,
        "encode_table",
        lambda tok, rows, *a, **k: encoded.append(len(rows)) or encode_table(tok, rows, *a, **k),
    )

    settings = dict(max_steps=4, save_steps=4, eval_steps=4)
    db.apply(fixtures.make_llm(db, tiny_model_dir, identifier="first", **settings), force=True)
    assert max(pages_read) == 10  # read in pages of 10 rows
    assert sorted(encoded) == [2, 8, 10, 10, 10]  # 32 training rows in pages of 10, 8 valid rows
    # 40 rows read twice: checked and hashed by the preflight (`fit` reuses that scan,
    # and superduper's `len()` its count), then tokenized. No third or fourth read.
    assert sum(pages_read) == 2 * 40
    cached = os.listdir(os.path.join(data_cache, "generator"))
    assert len(cached) == 2  # the training and the validation set

    encoded.clear()
    pages_read.clear()
    db.apply(fixtures.make_llm(db, tiny_model_dir, identifier="second", **settings), force=True)
    assert encoded == []  # same rows, same tokenization: nothing tokenized again
    assert sum(pages_read) == 40  # read once: the preflight's scan
    assert os.listdir(os.path.join(data_cache, "generator")) == cached
    for model in ("first", "second"):
        assert [r["step"] for r in list_checkpoints(db, model)] == [4]

    # Another max_seq_length is another cache entry.
    db.apply(
        fixtures.make_llm(db, tiny_model_dir, identifier="third", max_seq_length=16, **settings), force=True
    )
    assert sorted(encoded) == [2, 8, 10, 10, 10]
    assert len(os.listdir(os.path.join(data_cache, "generator"))) == 4


def test_a_fingerprint_hashed_the_old_way_is_compared_by_its_counts_only():
    rows = [{"x": x, "y": y} for x, y in fixtures.FACTS]
    now = lineage.data_fingerprint("q", rows, {}, 64, "{input}", False)
    old = {k: v for k, v in now.items() if k != "hash"}  # recorded before hashes were sums
    old["train_sha256"] = "0" * 64
    assert lineage.data_changes(old, now) == []  # another hash method: not comparable
    assert lineage.data_changes({**old, "train_rows": 31}, now) == ["training rows: 31 before, 32 now"]


def test_data_cache_lists_and_clears_what_no_training_used_lately(tokenizer, data_cache, capsys):
    """`data-cache` lists the tokenized datasets; `--clear --older-than DAYS` removes those
    no training read for that long, and a training on those rows tokenizes them again."""
    from superduper_transformers import cli

    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]
    old = data.build_dataset(tokenizer, rows, "x", "y", 512)
    recent = data.build_dataset(tokenizer, rows, "x", "y", 16)  # other settings: another entry
    old_entry = os.path.dirname(os.path.dirname(old.cache_files[0]["filename"]))
    old_ids = old["input_ids"]
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old_entry, (ten_days_ago, ten_days_ago))

    assert cli.main(["data-cache"]) == 0
    listing = capsys.readouterr().out
    assert "2 tokenized dataset(s)" in listing and "used 10.0 days ago" in listing and data_cache in listing
    assert cli.main(["data-cache", "--older-than", "3"]) == 2  # without --clear: refused
    assert "add --clear" in capsys.readouterr().err

    assert cli.main(["data-cache", "--clear", "--older-than", "3"]) == 0
    assert "removed 1 tokenized dataset(s)" in capsys.readouterr().out
    assert not os.path.exists(old_entry) and os.path.exists(recent.cache_files[0]["filename"])
    # Used again: marked used now, so it stays; the removed one is tokenized again.
    data.build_dataset(tokenizer, rows, "x", "y", 16)
    assert cli.main(["data-cache", "--clear", "--older-than", "3"]) == 0
    assert "removed 0 tokenized dataset(s)" in capsys.readouterr().out
    again = data.build_dataset(tokenizer, rows, "x", "y", 512)
    assert os.path.exists(old_entry) and again["input_ids"] == old_ids  # tokenized again, the same
    assert cli.main(["data-cache", "--clear"]) == 0
    assert "removed 2 tokenized dataset(s)" in capsys.readouterr().out
    assert cli.main(["data-cache"]) == 0 and "0 tokenized dataset(s)" in capsys.readouterr().out


def test_data_cache_clear_removes_only_complete_entries_no_training_holds(tokenizer, data_cache, capsys):
    """Another tool's folder, an entry being built and an entry a training holds are kept."""
    import fcntl

    from superduper_transformers import cli

    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]
    done = _entry(data.build_dataset(tokenizer, rows, "x", "y", 512))
    held = _entry(data.build_dataset(tokenizer, rows, "x", "y", 16))
    root = os.path.join(data_cache, "generator")
    foreign = os.path.join(root, "default-fingerprint=another-tool", "0.0.0")
    building = os.path.join(root, "default-fingerprint=being-built", "0.0.0.incomplete")
    for folder in (foreign, building):
        os.makedirs(folder)
        open(os.path.join(folder, "data.arrow"), "wb").close()
    lock = os.open(os.path.join(held, "0.0.0_builder.lock"), os.O_RDWR)  # as datasets holds it
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        assert cli.main(["data-cache"]) == 0
        listing = capsys.readouterr().out
        assert "2 tokenized dataset(s)" in listing and "2 other folder(s)" in listing
        assert cli.main(["data-cache", "--clear"]) == 0
        out = capsys.readouterr().out
        assert "removed 1 tokenized dataset(s)" in out and "1 kept" in out and "left alone" in out
        assert not os.path.exists(done)
        assert all(os.path.exists(p) for p in (held, foreign, building))
    finally:
        os.close(lock)
    assert cli.main(["data-cache", "--clear"]) == 0  # released: removed now
    assert "removed 1 tokenized dataset(s)" in capsys.readouterr().out
    assert not os.path.exists(held) and os.path.exists(foreign) and os.path.exists(building)


def _entry(ds) -> str:
    return os.path.dirname(os.path.dirname(ds.cache_files[0]["filename"]))
