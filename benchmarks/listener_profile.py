"""Where a listener's insert spends its CPU time: superduper's job machinery, the listener, the model.

One insert of ``--rows`` rows under a listener (``benchmarks/listener.py``'s arm), with each
function below wrapped to add up its CPU time (``time.process_time``: no profiler
overhead, one thread) while that insert runs. Nested entries are included in their callers'.

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/listener_profile.py --backend sqlite``
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("OMP_NUM_THREADS", "1")

SPENT: collections.Counter = collections.Counter()
TIMING = {"on": False}


def timed(owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds its CPU time to ``SPENT[label]`` (measuring only)."""
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not TIMING["on"]:
            return function(*args, **kwargs)
        start = time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            SPENT[label] += time.process_time() - start

    setattr(owner, name, wrapper)


def instrument(table: str) -> None:
    import superduper.components.cdc as cdc
    from superduper.backends.base.data_backend import BaseDataBackend
    from superduper.base import query
    from superduper.base.datalayer import Datalayer
    from superduper.base.metadata import Job, MetaDataStore
    from superduper.components.component import Component
    from superduper.components.listener import Listener

    from superduper_transformers.listener import LLMListener
    from superduper_transformers.model import LLM
    from superduper_transformers.store import listener_rows

    timed(Datalayer, "on_event", "superduper: on_event (all the jobs of the insert)")
    timed(cdc, "build_streaming_graph", "superduper: build_streaming_graph")
    for name in ("show_cdcs", "show_cdc_tables", "is_component", "create_job"):
        timed(MetaDataStore, name, f"superduper: metadata.{name}")
    for name in ("run", "set_status", "get_status", "save_output"):
        timed(Job, name, f"superduper: Job.{name}")
    timed(Datalayer, "load", "superduper: db.load (the job's component)")
    timed(Component, "setup", "superduper: Component.setup")
    timed(BaseDataBackend, "do_insert", "superduper: do_insert (rows, outputs)")
    timed(query.Query, "subset", "superduper: select.subset (Listener's read)")
    timed(Listener, "run", "Listener.run")
    timed(LLMListener, "run", "LLMListener.run")
    timed(listener_rows, "read_inputs", "ours: listener_rows.read_inputs")
    timed(listener_rows, "write_outputs", "ours: listener_rows.write_outputs")
    timed(LLM, "predict_batches", "ours: LLM.predict_batches")

    insert = query.insert

    def timed_insert(self, documents, raw=False):  # the benchmark's insert: the one measured
        if self.table != table or len(documents) < 2:
            return insert(self, documents, raw=raw)
        TIMING["on"], start = True, time.process_time()
        try:
            return insert(self, documents, raw=raw)
        finally:
            SPENT["TOTAL: the insert"] += time.process_time() - start
            TIMING["on"] = False

    query.insert = timed_insert  # queries bind the module's `insert` when they are made


def main() -> None:
    from benchmarks.listener import listener, plain
    from plugin_tests.fixtures import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--backend", choices=["mongomock", "sqlite"], default="sqlite")
    parser.add_argument("--listener", choices=["Listener", "LLMListener"], default="LLMListener")
    args = parser.parse_args()
    model_dir = build_tiny_model(tempfile.mkdtemp())
    prompts = [f"{i}+{i % 7}=" for i in range(args.rows)]
    instrument("questions")
    uri = "mongomock://profile" if args.backend == "mongomock" else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    listener(model_dir, prompts, args.batch, args.new_tokens, uri, args.listener)
    loop = plain(model_dir, prompts, args.batch, args.new_tokens)[1]
    print(f"plain generate loop (cpu): {loop:.3f} s")
    for label, seconds in sorted(SPENT.items(), key=lambda kv: -kv[1]):
        print(f"{seconds:8.3f} s  {label}")


if __name__ == "__main__":
    main()
