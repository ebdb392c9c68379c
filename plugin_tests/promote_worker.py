"""A process that promotes or prunes on a shared SQLite-file db, for the race tests.

Run as ``python -m plugin_tests.promote_worker ARGS_JSON``; ARGS_JSON holds ``uri``,
``store`` (absolute artifact-store folder), ``model``, ``ready`` (a file the worker
creates once connected) and ``phases``: one action per phase. Before the action of
phase ``i`` the worker waits for the file ``<ready>.go<i>`` (the test creates it when
every worker is ready, so that workers act together however long their imports took);
it then writes the action's result as JSON to ``<ready>.result<i>``. An action is

- ``{"promote": CHECKPOINT, "alias": NAME}``: ``promote.promote``;
- ``{"prune": RUN, "limit": N, "in_use": CHECKPOINT}``: ``promote.prune``;

with, optionally, ``slow`` (seconds): the promoting worker sleeps after each read of the
``Promotions`` row and after verifying the checkpoint, and creates ``verified`` (a file)
after the verification, so that without a lock another worker's action surely falls
between this one's reads and its write; ``after`` (a file): wait for it (at most 10 s)
before acting.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _wait_for(path: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.01)


def _slow_down(seconds: float, verified: str):
    """Patch the reads of the promotion path to sleep; returns the undo."""
    from superduper_transformers import checkpoint as ckpts
    from superduper_transformers import promote

    read, load = promote.promotions, ckpts.load_checkpoint

    def slow_read(*args, **kwargs):
        out = read(*args, **kwargs)
        time.sleep(seconds)
        return out

    def slow_load(*args, **kwargs):
        out = load(*args, **kwargs)
        open(verified, "w").close()
        time.sleep(seconds)
        return out

    promote.promotions, ckpts.load_checkpoint = slow_read, slow_load

    def undo():
        promote.promotions, ckpts.load_checkpoint = read, load

    return undo


def _act(db, model: str, action: dict):
    from superduper_transformers import promote

    undo = _slow_down(action["slow"], action["verified"]) if action.get("slow") else None
    if action.get("after"):
        _wait_for(action["after"], 10)
    try:
        if "promote" in action:
            return promote.promote(db, model, action["promote"], alias=action.get("alias"), by="worker")
        return promote.prune(db, model, action["prune"], action["limit"], None, False, action["in_use"])
    except promote.PromotionError as e:
        return {"error": str(e)}
    finally:
        if undo is not None:
            undo()


def main(args: dict) -> None:
    from superduper import CFG

    CFG.artifact_store = f"filesystem://{args['store']}"

    from superduper_transformers.store.datalayer import connect

    db = connect(args["uri"], force_apply=True)
    open(args["ready"], "w").close()
    for i, action in enumerate(args["phases"]):
        _wait_for(f"{args['ready']}.go{i}", 300)
        result = _act(db, args["model"], action)
        with open(f"{args['ready']}.result{i}.partial", "w") as f:
            json.dump(result, f)
        os.rename(f"{args['ready']}.result{i}.partial", f"{args['ready']}.result{i}")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
