"""Listener throughput: rows answered by a ``Listener`` against a plain batched ``generate`` loop.

All arms use the same tiny random Llama (built here), the same 1,000 distinct prompts,
batch size, ``max_new_tokens`` and precision (the one the ``LLM`` chooses from the
hardware), in one process, interleaved ``--repeat`` times; the best time of each counts.
A listener arm inserts the rows into a table (mongomock, or a SQLite file) under a
listener of an ``LLM`` with ``record_checkpoint``, weights already loaded: superduper
reads the new rows, the ``LLM`` generates ``max_batch_size`` at a time and superduper
stores the outputs. Arms: superduper's ``Listener`` and ``LLMListener`` (its outputs
named once per run, the key column read and the outputs written through the backend's
driver). ``benchmarks/listener_profile.py`` splits one insert's CPU time by function. The plain arm tokenizes and calls ``model.generate`` per batch.
The figure of merit is rows/s of a listener over rows/s of the plain loop (target: >= 0.9).

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/listener.py --rows 1000 --batch 8``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import typing as t

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def plain(model_dir: str, prompts, batch: int, new_tokens: int) -> t.Tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from superduper_transformers.hf.loading import default_device
    from superduper_transformers.settings import resolve_precision

    # The precision the LLM predicts in (chosen from the hardware): the same computation.
    precision = resolve_precision(default_device())
    autocast = torch.autocast("cpu", dtype=precision.torch_dtype, enabled=precision.name != "fp32")

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
        with torch.no_grad(), autocast:
            out = model.generate(
                **enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return time.perf_counter() - start, time.process_time() - cpu


def listener(
    model_dir: str, prompts, batch: int, new_tokens: int, uri: str, kind: str
) -> t.Tuple[float, float]:
    from superduper import CFG, Listener, Table, superduper

    from superduper_transformers import LLM

    CFG.artifact_store = f"filesystem://{tempfile.mkdtemp()}/artifact_store"
    db = superduper(uri, force_apply=True)
    db.apply(Table("questions", fields={"question": "str"}), force=True)
    llm = LLM(
        "bench",
        model_name_or_path=model_dir,
        record_checkpoint=True,
        max_batch_size=batch,
        predict_kwargs={"max_new_tokens": new_tokens},
    )
    if kind == "LLMListener":
        from superduper_transformers import LLMListener as Listener
    lst = Listener("answers", model=llm, key="question", select=db["questions"].select())
    db.apply(lst, force=True)
    db["questions"].insert([{"question": "0+0="}])  # loads the weights: not timed
    start, cpu = time.perf_counter(), time.process_time()
    db["questions"].insert([{"question": p} for p in prompts])
    elapsed = time.perf_counter() - start, time.process_time() - cpu
    assert len(db[lst.outputs].select().execute()) == len(prompts) + 1
    return elapsed


def main() -> None:
    from plugin_tests.fixtures import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each arm, interleaved; the best counts"
    )
    parser.add_argument("--backend", choices=["mongomock", "sqlite"], default="mongomock")
    parser.add_argument(
        "--listeners",
        default="Listener,LLMListener",
        help="listener arms (Listener alone: a release without LLMListener)",
    )
    args = parser.parse_args()
    kinds = args.listeners.split(",")
    model_dir = build_tiny_model(tempfile.mkdtemp())
    prompts = [f"{i}+{i % 7}=" for i in range(args.rows)]  # distinct prompts
    times = {"plain": [], **{kind: [] for kind in kinds}}
    for run in range(args.repeat):
        times["plain"].append(plain(model_dir, prompts, args.batch, args.new_tokens))
        for kind in kinds:
            uri = (
                f"mongomock://bench-{kind}-{run}"
                if args.backend == "mongomock"
                else f"sqlite:///{tempfile.mkdtemp()}/bench.db"
            )
            times[kind].append(listener(model_dir, prompts, args.batch, args.new_tokens, uri, kind))
    # Wall time, and CPU time (one thread: less moved by other jobs on a shared machine).
    for i, clock in enumerate(("wall", "cpu")):
        best = {k: min(x[i] for x in v) for k, v in times.items()}
        for k, v in best.items():
            print(f"{clock} {k}: {args.rows / v:.0f} rows/s (times {[round(x[i], 3) for x in times[k]]})")
        for kind in kinds:
            print(f"{clock} {kind} / plain throughput: {best['plain'] / best[kind]:.2f}")


if __name__ == "__main__":
    main()
