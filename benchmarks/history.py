"""Does recording a run's metric history get slower as the run gets longer?

Each save appends the entries logged since the previous save as one row of the
``training_history`` table (``superduper_transformers.history.record_history``). This
times one save of 10 new entries after histories of 100 and of 10,000 entries, on a
SQLite file, and reports their ratio (1.0 = the cost does not grow), with the time to
read the whole history back. Run: ``python benchmarks/history.py``.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")

ENTRY = {"loss": 1.0, "grad_norm": 0.5, "learning_rate": 1e-4, "mean_token_accuracy": 0.5, "epoch": 1.0}


def save_cost(db, history, n: int, repeats: int = 5) -> float:
    """Seconds for one save of 10 entries after a history of ``n`` entries."""
    log = [{**ENTRY, "step": i + 1} for i in range(n + 10)]
    history.record_history(db, "bench", f"run{n}", log, 0, n)
    start = time.perf_counter()
    for _ in range(repeats):
        history.record_history(db, "bench", f"run{n}", log, n, n + 10)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    from superduper import CFG, superduper

    from superduper_transformers import history

    with tempfile.TemporaryDirectory() as tmp:
        CFG.artifact_store = f"filesystem://{tmp}/artifact_store"
        db = superduper(f"sqlite:///{tmp}/db.sqlite", force_apply=True)
        history.record_history(db, "bench", "warm-up", [], 0, 0)  # creates the table
        short, long = save_cost(db, history, 100), save_cost(db, history, 10_000)
        start = time.perf_counter()
        entries = len(history.stored_history(db, "bench", "run10000"))
        read = time.perf_counter() - start
    print(f"one save after 100 entries: {short * 1000:.0f} ms; after 10,000: {long * 1000:.0f} ms")
    print(f"ratio (10,000 / 100): {long / short:.2f}; reading {entries} entries back: {read * 1000:.0f} ms")


if __name__ == "__main__":
    main()
