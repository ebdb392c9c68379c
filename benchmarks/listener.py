"""Listener throughput: rows answered by a ``Listener`` against a plain batched ``generate`` loop.

Both arms use the same tiny random Llama (built here), the same prompts, batch size and
``max_new_tokens``, in one process, interleaved twice (plain, listener, plain, listener);
the best time of each counts. The listener arm inserts the rows into a mongomock table
under a ``Listener`` of an ``LLM`` with ``record_checkpoint``: superduper reads the new
rows, the ``LLM`` generates ``max_batch_size`` at a time and superduper stores the outputs.
The plain arm tokenizes and calls ``model.generate`` per batch. The figure of merit is
rows/s of the listener over rows/s of the plain loop (target: >= 0.9).

Run: ``PYTHONPATH=. python benchmarks/listener.py --rows 1000 --batch 8``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def plain(model_dir: str, prompts, batch: int, new_tokens: int) -> float:
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
    start = time.perf_counter()
    for i in range(0, len(prompts), batch):
        enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True)
        with torch.no_grad(), autocast:
            out = model.generate(
                **enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
        tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return time.perf_counter() - start


def listener(model_dir: str, prompts, batch: int, new_tokens: int, run: int) -> float:
    from superduper import CFG, Listener, Table, superduper

    from superduper_transformers import LLM

    CFG.artifact_store = f"filesystem://{tempfile.mkdtemp()}/artifact_store"
    db = superduper(f"mongomock://bench-listener-{run}", force_apply=True)
    db.apply(Table("questions", fields={"question": "str"}), force=True)
    llm = LLM(
        "bench",
        model_name_or_path=model_dir,
        record_checkpoint=True,
        max_batch_size=batch,
        predict_kwargs={"max_new_tokens": new_tokens},
    )
    lst = Listener("answers", model=llm, key="question", select=db["questions"].select())
    db.apply(lst, force=True)
    db["questions"].insert([{"question": "0+0="}])  # loads the weights: not timed
    start = time.perf_counter()
    db["questions"].insert([{"question": p} for p in prompts])
    elapsed = time.perf_counter() - start
    assert len(db[lst.outputs].select().execute()) == len(prompts) + 1
    return elapsed


def main() -> None:
    from plugin_tests.fixtures import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=4)
    args = parser.parse_args()
    model_dir = build_tiny_model(tempfile.mkdtemp())
    prompts = [f"{i}+{i % 7}=" for i in range(args.rows)]  # distinct prompts
    times = {"plain": [], "listener": []}
    for run in range(2):
        times["plain"].append(plain(model_dir, prompts, args.batch, args.new_tokens))
        times["listener"].append(listener(model_dir, prompts, args.batch, args.new_tokens, run))
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k}: {args.rows / v:.0f} rows/s (best of {times[k]})")
    print(f"listener / plain throughput: {best['plain'] / best['listener']:.2f}")


if __name__ == "__main__":
    main()
