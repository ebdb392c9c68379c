"""Promotions, deletions and pruning of one model from several processes at once.

Workers (``plugin_tests/promote_worker.py``) share a SQLite-file datalayer and the
artifact store; they connect, then start their actions together. A promoting worker
sleeps between its reads and its write (``slow``), so without a lock the other worker's
action always falls in between.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from superduper_transformers import LLM, promote
from superduper_transformers.checkpoint import list_checkpoints, load_checkpoint, register_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (10, 20, 30, 40, 50)


@pytest.fixture
def five_checkpoints(sqlite_db, tiny_model_dir, tmp_path):
    """``tiny`` with checkpoints at STEPS of run ``run1``, pointing at the last."""
    ckpts = []
    for step in STEPS:
        folder = tmp_path / "out" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"w" * step)
        ckpts.append(
            register_checkpoint(sqlite_db, model="tiny", experiment_id="run1", path=str(folder), step=step)
        )
    sqlite_db.apply(LLM("tiny", model_name_or_path=tiny_model_dir, adapter_id=ckpts[-1]), force=True)
    return [c.identifier for c in ckpts]


class Workers:
    """Worker processes on the test's SQLite datalayer, each given one action per phase."""

    def __init__(self, tmp_path, *phases_per_worker):
        from superduper import CFG

        self.tmp_path = tmp_path
        uri = f"sqlite:///{tmp_path / 'db.sqlite'}"
        store = CFG.artifact_store.split("://", 1)[-1]
        self.ready = [str(tmp_path / f"worker-{i}") for i in range(len(phases_per_worker))]
        self.procs = []
        for ready, phases in zip(self.ready, phases_per_worker):
            args = dict(uri=uri, store=store, model="tiny", ready=ready, phases=phases)
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "plugin_tests.promote_worker", json.dumps(args)],
                    cwd=REPO,
                    env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"),
                    stdin=subprocess.DEVNULL,
                    stdout=open(f"{ready}.log", "w"),
                    stderr=subprocess.STDOUT,
                )
            )
        self._wait(lambda: all(os.path.exists(r) for r in self.ready), "connect")

    def _wait(self, done, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not done():
            for ready, p in zip(self.ready, self.procs):
                assert p.poll() in (None, 0), open(f"{ready}.log").read()[-3000:]
            assert time.time() < deadline, f"the workers did not {what}"
            time.sleep(0.05)

    def phase(self, i: int):
        """Start phase ``i`` in every worker at once; the results, in worker order."""
        for ready in self.ready:
            open(f"{ready}.go{i}", "w").close()
        self._wait(lambda: all(os.path.exists(f"{r}.result{i}") for r in self.ready), f"finish phase {i}")
        return [json.load(open(f"{r}.result{i}")) for r in self.ready]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def test_promotions_and_a_prune_from_two_processes_run_one_at_a_time(sqlite_db, five_checkpoints, tmp_path):
    c10, c20, c30, c40, c50 = five_checkpoints
    verified = str(tmp_path / "verified")
    workers = Workers(
        tmp_path,
        [
            dict(promote=c10, alias="prod", slow=0.5, verified=verified + "0"),
            # verifies c30, then (slowly) writes the alias; the other worker's prune starts
            # once c30 is verified and, without the lock, deletes it before the alias is written
            dict(promote=c30, alias="next", slow=1.5, verified=verified + "1"),
        ],
        [
            dict(promote=c20, alias="candidate", slow=0.5, verified=verified + "0"),
            dict(prune="run1", limit=1, in_use=c50, after=verified + "1"),
        ],
    )
    try:
        # 1. Two promotions at once: both land, no alias or history entry is lost.
        first, second = workers.phase(0)
        assert {first["to"], second["to"]} == {c10, c20}
        record = promote.promotions(sqlite_db, "tiny")
        assert record.aliases == {"prod": c10, "candidate": c20}
        promoted = sorted((e["pointer"], e["to"]) for e in record.history if e["action"] == promote.PROMOTE)
        assert promoted == [("candidate", c20), ("prod", c10)]

        # 2. A prune during a promotion: no alias is left on a deleted checkpoint.
        promoted, pruned = workers.phase(1)
    finally:
        workers.close()
    assert "error" not in promoted, promoted
    remaining = {r["identifier"] for r in list_checkpoints(sqlite_db, "tiny")}
    aliases = promote.promotions(sqlite_db, "tiny").aliases
    assert aliases == {"prod": c10, "candidate": c20, "next": c30}
    assert set(aliases.values()) <= remaining
    load_checkpoint(sqlite_db, c30)  # its files are there, verified
    assert pruned == [c40] and remaining == {c10, c20, c30, c50}


def test_a_promotion_undoes_itself_when_its_checkpoint_is_deleted_meanwhile(db, tmp_path, monkeypatch):
    # A deleter that does not take the lock (an older version, a raw `db.teardown`)
    # removes the checkpoint while it is being promoted: the alias is not left on it.
    from superduper_transformers import checkpoint as ckpts

    folder = tmp_path / "out" / "checkpoint-10"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    target = register_checkpoint(db, model="tiny", experiment_id="run1", path=str(folder), step=10)
    db.apply(LLM("tiny", model_name_or_path=str(tmp_path)), force=True)
    load = ckpts.load_checkpoint

    def load_then_lose(db, identifier):
        out = load(db, identifier)
        ckpts.remove_checkpoint(db, identifier)
        return out

    monkeypatch.setattr(ckpts, "load_checkpoint", load_then_lose)
    with pytest.raises(
        promote.PromotionError, match=rf"Checkpoint `{target.identifier}` .* was deleted while prod"
    ):
        promote.promote(db, "tiny", target.identifier, alias="prod")
    record = promote.promotions(db, "tiny")
    assert record.aliases == {} and record.history == []
