"""Rows in the db -> first training step, for growing tables: lists vs pages.

For each size (short ``a+b=`` rows in an embedded SQLite datalayer), each arm runs in
its own fresh process, so that its peak RSS is its own:

- ``lists``: the old path. Every selected row into Python lists (superduper's
  ``select.execute()``), tokenized one row at a time into ``Dataset.from_list``; on Ray
  the tokenized dataset is pickled into the job every worker receives.
- ``pages``: ``db.apply(llm)``: the rows read in pages, hashed and tokenized in
  batches into a memory-mapped Arrow file (locally), or read by Ray Data
  (``read_sql``), tokenized on the cluster and split across the workers (Ray).

Reported per arm: seconds from the start of the process to the end of the first
training step (wall time, and the CPU time of the process: on a shared machine the
first is stretched by other jobs, the second much less), the driver's peak RSS, and each Ray worker's peak RSS (rank 0 and 1).
With ``--again`` (local ``pages`` only) a second training on the same rows follows in the
same process: seconds from its apply to its first step, and the rows it tokenized (0 when
it reuses the tokenized cache of the first).
The figure of merit is a ratio within one run: driver peak RSS at the largest size
over that at the smallest (target: <= 1.3 for ``pages``).

Run: ``PYTHONPATH=. python benchmarks/data_scale.py --sizes 10000 100000 1000000 [--ray] [--again]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time

START = time.time()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def cpu_seconds() -> float:
    """CPU seconds this process has used (all its threads): less moved by other jobs than wall time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_db(folder: str, n: int) -> str:
    """A SQLite datalayer with ``n`` training rows; returns its URI."""
    from superduper import Table, superduper

    path = os.path.join(folder, "db.sqlite")
    db = superduper(f"sqlite:///{path}", force_apply=True)
    db.apply(Table("facts", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db["facts"].insert([{"x": "1+1=", "y": "2", "_fold": "valid"}])
    db.disconnect()
    # Millions of rows through superduper's insert would dominate the set-up: the table
    # superduper created is filled directly, with the same columns.
    conn = sqlite3.connect(path)
    conn.executemany(
        'INSERT INTO facts (x, y, _fold, id) VALUES (?, ?, "train", ?)',
        ((f"{i % 997}+{i % 89}=", str(i % 997 + i % 89), f"r{i}") for i in range(n)),
    )
    conn.commit()
    conn.close()
    return f"sqlite:///{path}"


class FirstStep:
    """A ``TrainerCallback`` writing time-to-first-step and peak RSS to a file, then stopping."""

    def __init__(self, out: str):
        self.out = out

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        rank = int(os.environ.get("RANK", "0"))
        with open(f"{self.out}.rank{rank}", "w") as f:
            json.dump(
                {
                    "first_step_s": time.time() - float(os.environ["BENCH_START"]),
                    "cpu_s": cpu_seconds() - float(os.environ.get("BENCH_CPU_START", "0")),
                    "rss_mb": peak_rss_mb(),
                },
                f,
            )
        control.should_training_stop = True


def arm(uri: str, store: str, model_dir: str, mode: str, workers: int, out: str, again: bool) -> None:
    """One measurement, in this (fresh) process."""
    import dataclasses as dc

    from superduper import CFG, superduper

    CFG.artifact_store = f"filesystem://{store}"
    from transformers import TrainerCallback

    from plugin_tests import fixtures
    from superduper_transformers.hf import train as hf_train

    class Callback(FirstStep, TrainerCallback):
        pass

    callback = Callback(out)
    db = superduper(uri, force_apply=True)
    ray_configs = None
    if workers:
        from ray.train import RunConfig, ScalingConfig

        ray_configs = {
            "scaling_config": ScalingConfig(num_workers=workers, use_gpu=False),
            "num_cpus": max(2, workers),
            "temp_dir": tempfile.mkdtemp(prefix="sdbench-", dir="/tmp"),
            "run_config": RunConfig(storage_path=os.path.join(os.path.dirname(store), "ray")),
        }
    llm = fixtures.make_llm(
        db,
        model_dir,
        max_steps=2,
        save_steps=100,
        eval_strategy="no",
        log_to_db=False,
        ray_configs=ray_configs,
    )
    if mode == "pages":
        run_job, current = hf_train.run_job, [callback]  # current: the callback of the running apply
        hf_train.run_job = lambda job: run_job(dc.replace(job, callbacks=[*job.callbacks, current[0]]))
        if workers:  # the workers run in other processes: the callback travels with the job
            from superduper_transformers.launch import ray_train

            ray_train_fn = ray_train.ray_train
            ray_train.ray_train = lambda job, **kw: ray_train_fn(
                dc.replace(job, callbacks=[*job.callbacks, callback]), **kw
            )
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        tokenized = _count_tokenized_rows() if again else []
        _apply(db, llm)
        if again:
            first = sum(tokenized)
            tokenized.clear()
            _again(db, model_dir, out, current)
            with open(f"{out}.again.tokenized", "w") as f:
                json.dump({"first": first, "again": sum(tokenized)}, f)
    else:
        from superduper_transformers import trainer_args as cfg
        from superduper_transformers import training
        from superduper_transformers.hf.loading import load_tokenizer
        from superduper_transformers.trainer import as_rows

        values = [
            [r["x"], r["y"]] for r in db["facts"].select().filter(db["facts"]["_fold"] == "train").execute()
        ]
        rows = as_rows(values, ["x", "y"])
        tokenizer = load_tokenizer(llm.tokenizer_load_kwargs())
        ds = _from_list(tokenizer, rows)
        args = cfg.build_config(llm.trainer, cfg.output_dir_for(llm.trainer, "bench"), has_eval=False)
        if workers:
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        db.apply(llm.__class__("bench", model_name_or_path=model_dir), force=True)
        training.train(
            args,
            ds,
            None,
            llm.model_load_kwargs(),
            llm.tokenizer_load_kwargs(),
            ray_configs=ray_configs,
            config=llm.trainer,
            callbacks=[callback],
        )
    with open(f"{out}.driver", "w") as f:
        json.dump({"rss_mb": peak_rss_mb()}, f)


def _apply(db, llm) -> None:
    try:
        db.apply(llm, force=True)
    except Exception as e:  # noqa: BLE001 (stopped after the first step: nothing to register)
        print(f"apply ended: {e!r:.200}", file=sys.stderr)


def _count_tokenized_rows() -> list:
    """A list that gets the number of rows of each batch tokenized from now on."""
    from superduper_transformers.hf import data

    tokenized, encode_table = [], data.encode_table
    data.encode_table = lambda tok, rows, *a, **k: (
        tokenized.append(len(rows)) or encode_table(tok, rows, *a, **k)
    )
    return tokenized


def _again(db, model_dir: str, out: str, current: list) -> None:
    """A second training on the same rows, timed to its first step."""
    from transformers import TrainerCallback

    from plugin_tests import fixtures

    class Callback(FirstStep, TrainerCallback):
        pass

    current[0] = Callback(f"{out}.again")
    os.environ["BENCH_START"], os.environ["BENCH_CPU_START"] = str(time.time()), str(cpu_seconds())
    llm = fixtures.make_llm(
        db, model_dir, identifier="again", max_steps=2, save_steps=100, eval_strategy="no", log_to_db=False
    )
    _apply(db, llm)


def _from_list(tokenizer, rows):
    """The old ``build_dataset``: one row at a time, then ``Dataset.from_list``."""
    from datasets import Dataset

    from superduper_transformers.hf import data

    return Dataset.from_list([data.tokenize(tokenizer, r, "x", "y", 512) for r in rows])


def measure(size: int, mode: str, workers: int, model_dir: str, again: bool = False) -> dict:
    folder = tempfile.mkdtemp(prefix=f"data-scale-{size}-")
    uri = make_db(folder, size)
    out = os.path.join(folder, "result")
    env = dict(
        os.environ, BENCH_START=str(time.time()), SD_TRANSFORMERS_DATA_CACHE=os.path.join(folder, "cache")
    )
    cmd = [
        sys.executable,
        __file__,
        "--arm",
        uri,
        os.path.join(folder, "store"),
        model_dir,
        mode,
        str(workers),
        out,
        str(int(again)),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = {"rows": size, "mode": mode, "workers": workers}
    for name in ("driver", "rank0", "rank1", "again.rank0", "again.tokenized"):
        path = f"{out}.{name}"
        if os.path.exists(path):
            with open(path) as f:
                result[name] = json.load(f)
    if "rank0" not in result:
        result["error"] = proc.stderr[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--ray", action="store_true", help="also on a 2-worker local Ray")
    parser.add_argument("--ray-only", action="store_true", help="only on a 2-worker local Ray")
    parser.add_argument("--modes", nargs="+", default=["lists", "pages"], choices=["lists", "pages"])
    parser.add_argument(
        "--again", action="store_true", help="a second training on the same rows (local pages): cache reuse"
    )
    parser.add_argument("--arm", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        uri, store, model_dir, mode, workers, out, again = args.arm
        arm(uri, store, model_dir, mode, int(workers), out, again == "1")
        return

    from plugin_tests.fixtures import build_tiny_model

    model_dir = build_tiny_model(tempfile.mkdtemp(prefix="data-scale-model-"))
    results = []
    for workers in [2] if args.ray_only else [0, 2] if args.ray else [0]:
        for size in args.sizes:
            for mode in args.modes:
                r = measure(size, mode, workers, model_dir, args.again and mode == "pages" and not workers)
                results.append(r)
                print(json.dumps(r), flush=True)
    print(
        "\n| launcher | rows | path | first step (s) | CPU s (rank 0) | driver peak RSS (MB) "
        "| rank 0 / rank 1 peak RSS (MB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        where = f"Ray, {r['workers']} workers" if r["workers"] else "local"
        first = r.get("rank0", {}).get("first_step_s", float("nan"))
        cpu = r.get("rank0", {}).get("cpu_s", float("nan"))
        ranks = (
            " / ".join(f"{r[k]['rss_mb']:.0f}" for k in ("rank0", "rank1") if k in r) if r["workers"] else "-"
        )
        driver = r.get("driver", r.get("rank0", {})).get("rss_mb", float("nan"))
        print(f"| {where} | {r['rows']:,} | {r['mode']} | {first:.1f} | {cpu:.1f} | {driver:.0f} | {ranks} |")
    for r in results:
        if "again.rank0" in r:
            print(
                f"second training on the same {r['rows']:,} rows: first step "
                f"{r['again.rank0']['first_step_s']:.1f} s after its apply "
                f"({r['again.rank0'].get('cpu_s', float('nan')):.1f} CPU s), "
                f"rows tokenized: {r.get('again.tokenized', {}).get('first', 'n/a')} by the first training, "
                f"{r.get('again.tokenized', {}).get('again', 'n/a')} by the second"
            )
    for workers in sorted({r["workers"] for r in results}):
        for mode in ("lists", "pages"):
            arm_results = [
                r for r in results if r["workers"] == workers and r["mode"] == mode and "driver" in r
            ]
            if len(arm_results) > 1:
                lo, hi = arm_results[0], arm_results[-1]
                ratio = hi["driver"]["rss_mb"] / lo["driver"]["rss_mb"]
                print(
                    f"driver peak RSS {hi['rows']:,} / {lo['rows']:,} rows, {mode}, "
                    f"{'Ray' if workers else 'local'}: {ratio:.2f}x"
                )


if __name__ == "__main__":
    main()
