"""A process that inserts rows into a table a ``Loop`` watches, for the round tests.

Run as ``python -m plugin_tests.loop_worker ARGS_JSON``; ARGS_JSON holds ``uri`` (a
SQLite-file datalayer), ``store`` (absolute artifact-store folder), ``table`` and ``rows``
(the rows to insert). The loop's trigger runs in this process, maybe a round;
``SD_TRANSFORMERS_TEST_KILL_AT`` kills it at a crash point of the round's training
(:mod:`superduper_transformers._faults`). ``hold`` (optional, ``{"step": N, "until":
FILE}``) makes the round's training wait after step N until FILE exists
(:class:`plugin_tests.fixtures.HoldAt`: ``FILE.holding`` says it waits).
"""

from __future__ import annotations

import json
import sys


def _hold(step: int, until: str) -> None:
    """Add a :class:`~plugin_tests.fixtures.HoldAt` to the trainings of this process."""
    import dataclasses as dc

    from plugin_tests.fixtures import HoldAt
    from superduper_transformers.hf import train as hf_train

    run_job = hf_train.run_job
    hf_train.run_job = lambda job: run_job(dc.replace(job, callbacks=[*job.callbacks, HoldAt(step, until)]))


def main(args: dict) -> None:
    from superduper import CFG

    CFG.artifact_store = f"filesystem://{args['store']}"
    from superduper_transformers.store.datalayer import connect

    if args.get("hold"):
        _hold(**args["hold"])
    db = connect(args["uri"], force_apply=True)
    db[args["table"]].insert(args["rows"])


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
