"""Read-only commands: ``models``, ``runs``, ``checkpoints``, ``status``, ``ask``.

They read what trainings wrote into the database, from any process (a training may
be running in another one: ``status --watch`` follows it).
"""

from __future__ import annotations

import datetime
import os
import time
import typing as t

from superduper_transformers.cli.common import CliError, connect, load_llm
from superduper_transformers.cli.loop_cmd import round_lines


def register(sub) -> None:
    """Add the commands of this module to the subparsers ``sub``."""
    p = sub.add_parser("models", help="list the LLMs in the database")
    p.set_defaults(run=models)

    p = sub.add_parser("runs", help="list training runs (state, steps, progress)")
    p.add_argument("model", nargs="?", help="only the runs of this LLM")
    p.set_defaults(run=runs)

    p = sub.add_parser(
        "checkpoints",
        help="list a model's checkpoints: step, losses, size, time, run, the best, [aliases]; "
        "* marks the one in use",
    )
    p.add_argument("model", nargs="?", help="identifier of the LLM")
    p.add_argument("--model", dest="model_option", help=argparse_suppress())
    p.set_defaults(run=checkpoints)

    p = sub.add_parser("status", help="progress of a model's latest training run")
    p.add_argument("model", help="identifier of the LLM")
    p.add_argument("--watch", action="store_true", help="refresh until the run ends (waits for one to start)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (--watch)")
    p.set_defaults(run=status)

    p = sub.add_parser("ask", help="load a model from the database and answer prompts")
    p.add_argument("--model", required=True)
    p.add_argument("prompts", nargs="+")
    p.set_defaults(run=ask)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS  # `--model NAME`: the spelling of earlier versions, still accepted


# -- formatting -------------------------------------------------------------
def fmt_duration(seconds: t.Optional[float]) -> str:
    """``1h02m``, ``3m05s``, ``12s``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def fmt_size(n: float) -> str:
    """Bytes in B, kB, MB, GB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def fmt_time(ts: t.Optional[float]) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "?"


def run_state(run) -> str:
    """``finished``, ``abandoned``, ``interrupted`` or ``running``.

    A run stopped with Ctrl-C says so in its progress; one whose process was killed
    stays ``running`` in the db until it resumes (its progress then stops updating:
    :func:`progress_line` shows how long ago it last did).
    """
    if run.state == "running" and (run.progress or {}).get("phase") == "interrupted":
        return "interrupted"
    return run.state


def progress_line(run, now: t.Optional[float] = None) -> str:
    """``step 120/400 (30%)  loss 0.512  1,200 tokens/s  ETA 1m05s  updated 3s ago``."""
    p = run.progress or {}  # None: a run recorded before progress existed
    if not p:
        return "no progress recorded"
    parts = []
    step, total = p.get("step"), p.get("max_steps")
    if step is not None:
        parts.append(f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}")
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("tokens_per_s"):
        parts.append(f"{p['tokens_per_s']:,.0f} tokens/s")
    if run.state == "running" and p.get("phase") == "training":
        parts.append(f"ETA {fmt_duration(p.get('eta_s'))}")
    if p.get("updated_at"):
        parts.append(f"updated {fmt_duration((now or time.time()) - p['updated_at'])} ago")
    return "  ".join(parts)


def _runs_of(db, model: t.Optional[str]):
    from superduper_transformers.store import records

    return records.runs(db, model)


# -- commands ---------------------------------------------------------------
def models(args) -> int:
    db = connect(args)
    for name in db.show("LLM"):
        print(name)
    return 0


def runs(args) -> int:
    db = connect(args)
    if args.model:
        load_llm(db, args.model)  # names the models there are when it is not one
    found = _runs_of(db, args.model)
    if not found:
        print("no training runs" + (f" of {args.model}" if args.model else ""))
    for run in found:
        resumed = f", resumed {len(run.resumes)}x" if run.resumes else ""
        print(
            f"{run.model}  run {run.experiment_id}  {run_state(run)}  started {fmt_time(run.started_at)}"
            f"{resumed}  {progress_line(run)}"
        )
    for line in round_lines(db, args.model):  # the rounds of a `Loop` (each one a run above)
        print(line)
    return 0


def saved_at(db, artifact_id: str) -> t.Optional[float]:
    """When a checkpoint's files were stored: its artifact folder's time (the row has none)."""
    from superduper_transformers.store.artifacts import store_root

    try:
        return os.path.getmtime(os.path.join(store_root(db), artifact_id))
    except (OSError, RuntimeError):  # files gone, or a store without a local folder
        return None


def checkpoints(args) -> int:
    from superduper_transformers.checkpoint import best_of_model, list_checkpoints
    from superduper_transformers.promote import promotions

    name = args.model or args.model_option
    if not name:
        raise CliError("name the model: `checkpoints MODEL` (list them with `models`).")
    db = connect(args)
    llm = load_llm(db, name)
    in_use = getattr(llm.adapter_id, "identifier", None)
    rows = list_checkpoints(db, name)
    if not rows:
        print(f"{name} has no checkpoints")
    # The best of each run (by its trainer's `metric_for_best_model`), in use or not.
    best = {
        b["identifier"]
        for b in (best_of_model(db, name, run) for run in {r["experiment_id"] for r in rows})
        if b
    }
    aliases: t.Dict[str, t.List[str]] = {}
    for alias, target in sorted(promotions(db, name).aliases.items()):
        aliases.setdefault(target, []).append(alias)
    for r in rows:
        mark = "*" if r["identifier"] == in_use else " "
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((r["metrics"] or {}).items()) if "loss" in k)
        size = sum(entry[0] for entry in (r["manifest"] or {}).values())
        tag = "  (best)" if r["identifier"] in best else ""
        if r["identifier"] in aliases:
            tag += f"  [{', '.join(aliases[r['identifier']])}]"
        when = saved_at(db, r["artifact_id"]) if r.get("artifact_id") else None
        print(
            f"{mark} {r['identifier']}  step={r['step']}  {metrics}  size={fmt_size(size)}  "
            f"saved={fmt_time(when)}  run={r['experiment_id']}{tag}"
        )
    return 0


def status(args) -> int:
    db = connect(args)
    if not args.watch:
        load_llm(db, args.model)  # names the models there are when it is not one
    waiting = False
    while True:
        found = _runs_of(db, args.model)
        if not found:
            if not args.watch:
                print(f"{args.model} has no training runs")
                return 0
            if not waiting:  # `--watch` started before the training: wait for it
                print(f"waiting for a training run of {args.model}...", flush=True)
                waiting = True
            time.sleep(args.interval)
            continue
        run = found[-1]
        state = run_state(run)
        print(f"{args.model}  run {run.experiment_id}  {state}  {progress_line(run)}", flush=True)
        if not args.watch or state != "running":
            _round_status(db, args.model)
            return 0
        time.sleep(args.interval)


def _round_status(db, model: str) -> None:
    """The latest round of the model's loops, and whether its rounds are paused."""
    from superduper_transformers import rounds

    lines = round_lines(db, model)
    if lines:
        print(f"latest round: {lines[-1]}")
    if rounds.paused(db, model):
        print(f"rounds of {model} are paused (`loop resume {model}`)")


def ask(args) -> int:
    db = connect(args)
    llm = load_llm(db, args.model)
    for prompt, answer in zip(args.prompts, llm.predict_batches(args.prompts)):
        print(f"Q: {prompt}\nA: {answer.strip()}")
    return 0
