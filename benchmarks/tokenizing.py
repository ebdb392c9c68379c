"""Rows/s of tokenizing into the cached Arrow dataset: today's path against the batched one.

- ``old``: the path before ``encode_table``: each page through the per-example encoder
  (``encode_batch_reference``: Python lists per row) and ``Dataset.from_generator``
  writing one example at a time.
- ``new``: ``build_dataset``: ``encode_table`` per page (one tokenizer call per column,
  labels on arrays) written as Arrow record batches.

Both in this process, one after the other, each into an empty cache, repeated; the
figure of merit is the ratio new/old of rows/s, per row format (pairs, whole text,
chat rows). Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/tokenizing.py --rows 50000``
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


def new_path(tokenizer, rows, y, cache_dir):
    from superduper_transformers.hf import data

    return data.build_dataset(tokenizer, rows, "x", y, 512, fingerprint="new", cache_dir=cache_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", nargs="+", default=["pairs", "text", "chat"])
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from plugin_tests.fixtures import build_tiny_model

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tempfile.mkdtemp(prefix="tok-bench-")))
    print(f"load average {os.getloadavg()[0]:.1f}, {args.rows:,} rows per format")
    print("| format | old rows/s | new rows/s | new / old |\n|---|---|---|---|")
    for fmt in args.formats:
        rows, y = rows_of(fmt, args.rows), "y" if fmt == "pairs" else None
        best = {}
        for _ in range(args.repeat):
            for name, build in (("old", old_path), ("new", new_path)):
                start = time.perf_counter()
                ds = build(tokenizer, rows, y, tempfile.mkdtemp(prefix=f"tok-{name}-"))
                seconds = time.perf_counter() - start
                assert len(ds) == len(rows)
                best[name] = max(best.get(name, 0), len(rows) / seconds)
        print(
            f"| {fmt} | {best['old']:,.0f} | {best['new']:,.0f} | {best['new'] / best['old']:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
