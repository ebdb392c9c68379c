"""A training process for the crash-safety tests: apply an LLM on a shared SQLite-file db.

Run as ``python -m plugin_tests.crash_worker ARGS_JSON``, where ARGS_JSON holds
``uri``, ``store`` (absolute artifact-store folder), ``model_dir``, ``identifier``,
``table``, ``probe`` (a JSON-lines file) and ``settings`` (``LLMTrainer`` keywords).

A probe callback appends what the tests assert on to ``probe``, one JSON object a line,
flushed at once (a SIGKILL loses nothing written before it):
``{"event": "begin", "step": N}`` when training starts (N > 0 after a resume),
``{"event": "step", "step": N, "lr": ...}`` after every optimizer step.

``hold`` (optional, ``{"step": N, "until": FILE}``) makes the worker wait after step N
until FILE exists (``{"event": "holding", "step": N}`` is written first): tests
synchronise processes on such events, never on their relative speed.

``SD_TRANSFORMERS_TEST_KILL_AT=step:N`` kills the process in the middle of step N
(after the backward pass, before the optimizer step); the ``copy`` and ``registered``
points are in the library (:mod:`superduper_transformers._faults`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_k, _v)


def _probe_callback(path: str, hold: dict | None = None):
    from transformers import TrainerCallback

    from superduper_transformers._faults import ENV

    kill = {w.strip() for w in os.environ.get(ENV, "").split(",")}

    class Probe(TrainerCallback):
        def __init__(self):
            self.f = open(path, "a", buffering=1)

        def write(self, **record):
            self.f.write(json.dumps({**record, "time": time.time(), "pid": os.getpid()}) + "\n")
            self.f.flush()

        def on_train_begin(self, args, state, control, **kwargs):
            self.write(event="begin", step=state.global_step)

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if f"step:{state.global_step + 1}" in kill:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            lr = kwargs.get("lr_scheduler").get_last_lr()[0] if kwargs.get("lr_scheduler") else None
            self.write(event="step", step=state.global_step, lr=lr)
            if hold and state.global_step == hold["step"]:
                self.write(event="holding", step=state.global_step)
                while not os.path.exists(hold["until"]):
                    time.sleep(0.05)

    return Probe()


def main(args: dict) -> None:
    """Apply the LLM described by ``args`` (training it, or resuming its interrupted run)."""
    from superduper import CFG

    from superduper_transformers.store.datalayer import connect

    CFG.artifact_store = f"filesystem://{args['store']}"

    import dataclasses as dc

    from plugin_tests import fixtures
    from superduper_transformers.hf import train as hf_train

    run_job = hf_train.run_job

    def probed_run_job(job):
        probe = _probe_callback(args["probe"], args.get("hold"))
        return run_job(dc.replace(job, callbacks=[*job.callbacks, probe]))

    hf_train.run_job = probed_run_job
    db = connect(args["uri"], force_apply=True)
    llm = fixtures.make_llm(
        db, args["model_dir"], identifier=args["identifier"], table=args["table"], **args["settings"]
    )
    db.apply(llm, force=True)
    print("WORKER DONE", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
