"""Rows/s of reading a training fold: superduper's decoded pages against the backend's cursor.

``FoldRows(native=False)`` pages through superduper's query (``limit``/``offset``, each
row decoded into a ``Document``); ``FoldRows(native=True)`` reads the same fold through
the backend's own cursor (``store/native_rows.py``). Both in this process, one after the
other, on an embedded SQLite file and on mongomock, repeated (best of); both must give
the same rows in the same order.
Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/reading.py --rows 100000``
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time

os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")


def make_db(backend: str, n: int):
    from superduper import CFG, Table, superduper

    folder = tempfile.mkdtemp(prefix="reading-")
    CFG.artifact_store = f"filesystem://{folder}/store"
    path = os.path.join(folder, "db.sqlite")
    db = superduper(f"sqlite:///{path}" if backend == "sqlite" else "mongomock://reading", force_apply=True)
    db.apply(Table("facts", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    rows = (
        (f"{i % 997}+{i % 89}=", str(i % 997 + i % 89), "valid" if i % 10 == 0 else "train") for i in range(n)
    )
    if backend == "sqlite":  # superduper's insert would dominate the set-up: filled directly
        conn = sqlite3.connect(path)
        conn.executemany(
            "INSERT INTO facts (x, y, _fold, id) VALUES (?, ?, ?, ?)",
            ((*r, f"r{i}") for i, r in enumerate(rows)),
        )
        conn.commit()
        conn.close()
    else:
        db.databackend._backend._database["facts"].insert_many(
            [{"x": x, "y": y, "_fold": f} for x, y, f in rows]
        )
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "mongomock"])
    args = parser.parse_args()
    from superduper_transformers.store.rows import FoldRows

    print(f"load average {os.getloadavg()[0]:.1f}, {args.rows:,} rows per table (90% train)")
    print("| backend | superduper rows/s | native rows/s | native / superduper |\n|---|---|---|---|")
    for backend in args.backends:
        db = make_db(backend, args.rows)
        select, best, read = db["facts"].select(), {}, {}
        for _ in range(args.repeat):
            for native in (False, True):
                rows = FoldRows(db, select, "train", ["x", "y"], native=native)
                start = time.perf_counter()
                read[native] = [row for page in rows.pages() for row in page]
                seconds = time.perf_counter() - start
                assert len(read[native]) == args.rows - (args.rows + 9) // 10
                best[native] = max(best.get(native, 0), len(read[native]) / seconds)
        assert read[True] == read[False], "the native read gave other rows or another order"
        print(
            f"| {backend} | {best[False]:,.0f} | {best[True]:,.0f} | {best[True] / best[False]:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
