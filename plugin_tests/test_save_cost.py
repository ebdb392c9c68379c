"""A checkpoint save does the same database work at the 1st save as at the Nth."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures


@pytest.mark.parametrize("limit", [None, 2])
def test_database_reads_per_save_do_not_grow_with_the_checkpoints(
    db, tiny_model_dir, tmp_path, monkeypatch, limit
):
    from superduper.base.datalayer import Datalayer

    from superduper_transformers import checkpoint
    from superduper_transformers.launch.callback import LLMCallback

    reads, current = [], {"rows": 0, "loads": 0}
    list_checkpoints, load, on_save = checkpoint.list_checkpoints, Datalayer.load, LLMCallback.on_save

    def counted_list(*a, **k):
        rows = list_checkpoints(*a, **k)
        current["rows"] += len(rows)
        return rows

    def counted_load(self, *a, **k):
        current["loads"] += 1
        return load(self, *a, **k)

    def counted_save(self, *a, **k):
        current.update(rows=0, loads=0)
        on_save(self, *a, **k)
        reads.append((current["rows"], current["loads"]))

    monkeypatch.setattr(checkpoint, "list_checkpoints", counted_list)
    monkeypatch.setattr(Datalayer, "load", counted_load)
    monkeypatch.setattr(LLMCallback, "on_save", counted_save)
    steps = 6
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=steps,
        save_steps=1,
        save_total_limit=limit,
        eval_strategy="no",
        output_dir=str(tmp_path / "out"),
    )
    db.apply(llm, force=True)
    assert len(reads) == steps
    # Once pruning starts (after `limit` saves), every save reads as many rows as the next.
    steady = reads[(limit or 0) + 1 :]
    assert len(set(steady)) == 1, reads
    assert len(checkpoint.list_checkpoints(db, "tiny")) == (limit or steps)
