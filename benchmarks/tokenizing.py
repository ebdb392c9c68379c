"""Rows/s of tokenizing into the cached Arrow dataset: today's path against the batched one.

- ``old``: the path before ``encode_table``: each page through the per-example encoder
  (``encode_batch_reference``: Python lists per row) and ``Dataset.from_generator``
  writing one example at a time.
- ``new``: ``build_dataset``: ``encode_table`` per page (one tokenizer call per column,
  labels on arrays) written as Arrow record batches.

Both in this process, one after the other, each into an empty cache, repeated; the
figure of merit is the ratio new/old of rows/s, per row format (pairs, whole text,
chat rows), best of the runs. Rows/s are given per wall-clock second and per CPU second
(this process and its worker processes): on a machine shared with other jobs the CPU
figure is the one-core rate. The last column is the Rust tokenizer alone on the same
texts: the most rows/s any path on one core can reach. ``--processes N`` adds the new
path in N worker processes (``build_dataset(processes=N)``), in the same run.
Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/tokenizing.py --rows 50000``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def rows_of(fmt: str, n: int):
    if fmt == "chat":
        return [
            {
                "x": [
                    {"role": "user", "content": f"{i % 997}+{i % 89}="},
                    {"role": "assistant", "content": str(i)},
                ]
            }
            for i in range(n)
        ]
    return [{"x": f"{i % 997}+{i % 89}=", "y": str(i % 997 + i % 89)} for i in range(n)]


def old_path(tokenizer, rows, y, cache_dir):
    from datasets import Dataset

    from superduper_transformers.hf import data

    def examples():
        for page in data.pages(rows):
            encoded, statuses = data.encode_batch_reference(tokenizer, page, "x", y, 512)
            for example, status in zip(encoded, statuses):
                yield {**example, data.STATUS_COLUMN: data._STATUS_CODES[status]}

    return Dataset.from_generator(examples, features=data._features(), cache_dir=cache_dir, fingerprint="old")


def new_path(tokenizer, rows, y, cache_dir, processes=1):
    from superduper_transformers.hf import data

    return data.build_dataset(
        tokenizer, rows, "x", y, 512, fingerprint="new", cache_dir=cache_dir, processes=processes
    )


def rust_seconds(tokenizer, rows, y):
    """CPU seconds of the Rust tokenizer alone on the texts the new path tokenizes (pages of
    1000): the floor of any path on one core."""
    from superduper_transformers.hf import chatml, data

    texts = []
    for row in rows:
        if y is not None:
            texts += [row["x"], row[y]]
        elif isinstance(row["x"], list):  # ChatML: the whole text and each reply's prefix
            text, replies = chatml.render(row["x"])
            texts += [text] + [text[:b] for b, _ in replies] + [text[:u] for _, u in replies if u < len(text)]
        else:
            texts.append(row["x"])
    backend = tokenizer.backend_tokenizer
    start = time.process_time()
    for i in range(0, len(texts), data.BATCH_SIZE):
        [e.ids for e in backend.encode_batch_fast(texts[i : i + data.BATCH_SIZE], add_special_tokens=False)]
    return time.process_time() - start


def cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["pairs", "text", "chat"])
    parser.add_argument("--processes", type=int, default=1, help="worker processes of the new path")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from plugin_tests.fixtures import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tempfile.mkdtemp(prefix="tok-bench-")))
    print(f"load average {os.getloadavg()[0]:.1f} at the start, {args.rows:,} rows per format, ", end="")
    print(f"new path with {args.processes} process(es)")
    paths = [("old", old_path, {}), ("new", new_path, {})]
    if args.processes > 1:
        paths.append((f"new, {args.processes} processes", new_path, {"processes": args.processes}))
    head = " | ".join(f"{name} rows/s" for name, _, _ in paths[1:])
    print(
        f"| format | old rows/s | {head} | old rows/CPU-s | new rows/CPU-s | new / old (CPU) "
        f"| Rust tokenizer alone, rows/CPU-s | load avg |\n|{'---|' * (len(paths) + 6)}"
    )
    for fmt in args.formats:
        rows, y = rows_of(fmt, args.rows), "y" if fmt == "pairs" else None
        wall, cpu = {}, {}
        for _ in range(args.repeat):
            for name, build, extra in paths:
                start, start_cpu = time.perf_counter(), cpu_seconds()
                ds = build(tokenizer, rows, y, tempfile.mkdtemp(prefix="tok-"), **extra)
                seconds, cpu_s = time.perf_counter() - start, cpu_seconds() - start_cpu
                assert len(ds) == len(rows)
                wall[name] = max(wall.get(name, 0), len(rows) / seconds)
                cpu[name] = max(cpu.get(name, 0), len(rows) / cpu_s)
        rust = len(rows) / min(rust_seconds(tokenizer, rows, y) for _ in range(args.repeat))
        others = " | ".join(
            f"{wall[name]:,.0f} ({wall[name] / wall['old']:.1f}x)" for name, _, _ in paths[1:]
        )
        print(
            f"| {fmt} | {wall['old']:,.0f} | {others} "
            f"| {cpu['old']:,.0f} | {cpu['new']:,.0f} | {cpu['new'] / cpu['old']:.1f}x | {rust:,.0f} "
            f"| {os.getloadavg()[0]:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
