"""The tokenized-data cache on disk: what it holds, and removing what was not used lately.

:func:`superduper_transformers.hf.data.build_dataset` writes one memory-mapped Arrow file
per distinct (rows, tokenization settings) into :func:`data_cache_dir` (datasets' builder
layout: ``generator/default-fingerprint=<key>/``). A large table tokenized under a few settings fills the disk; nothing else removes them. Each
training that reads an entry marks it used (its folder's modification time), so "older
than N days" means "not trained on for N days". Removing an entry a running training has
open is safe on POSIX systems (its open file stays readable); the next training with those
rows tokenizes them again.
"""

from __future__ import annotations

import dataclasses as dc
import glob
import os
import shutil
import time
import typing as t

#: datasets' folder of generator-built datasets inside the cache folder.
_BUILDER = "generator"

#: Environment variable naming the tokenized-dataset cache folder.
CACHE_ENV = "SD_TRANSFORMERS_DATA_CACHE"


def data_cache_dir() -> str:
    """Where tokenized datasets are cached: ``$SD_TRANSFORMERS_DATA_CACHE``, else a
    folder of datasets' own cache (``$HF_DATASETS_CACHE``)."""
    from datasets import config

    return os.environ.get(CACHE_ENV) or os.path.join(str(config.HF_DATASETS_CACHE), "superduper_transformers")


@dc.dataclass(frozen=True)
class CacheEntry:
    """One tokenized dataset in the cache.

    :param path: Its folder.
    :param size_bytes: Bytes of its files.
    :param last_used: Unix time of its last use (or of its creation).
    """

    path: str
    size_bytes: int
    last_used: float


def _size(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # removed meanwhile
                pass
    return total


def entries(cache_dir: t.Optional[str] = None) -> t.List[CacheEntry]:
    """The cached tokenized datasets, least recently used first.

    :param cache_dir: The cache folder (default: ``data_cache_dir()``).
    """
    root = os.path.join(cache_dir or data_cache_dir(), _BUILDER)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            out.append(CacheEntry(path, _size(path), os.path.getmtime(path)))
    return sorted(out, key=lambda e: e.last_used)


def mark_used(dataset) -> None:
    """Record that ``dataset`` (loaded from the cache) was used now."""
    for cache_file in getattr(dataset, "cache_files", None) or []:
        folder = os.path.dirname(os.path.dirname(cache_file["filename"]))  # .../<entry>/0.0.0/x.arrow
        if os.path.basename(os.path.dirname(folder)) == _BUILDER:
            try:
                os.utime(folder)
            except OSError:  # a read-only cache: nothing to record
                pass


def clear(
    older_than_s: t.Optional[float] = None, cache_dir: t.Optional[str] = None, now: t.Optional[float] = None
) -> t.List[CacheEntry]:
    """Remove cached tokenized datasets: all, or those not used for ``older_than_s`` seconds.

    :param older_than_s: Keep entries used more recently than this (None: remove all).
    :param cache_dir: The cache folder (default: ``data_cache_dir()``).
    :param now: The current Unix time (default: the clock).
    :return: the entries removed.
    """
    if older_than_s is not None and older_than_s < 0:
        raise ValueError(f"`older_than_s` must be >= 0, got {older_than_s!r}.")
    now = time.time() if now is None else now
    removed = []
    for entry in entries(cache_dir):
        if older_than_s is not None and now - entry.last_used < older_than_s:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        # datasets' lock files for the entry, beside the builder folder
        key = os.path.basename(entry.path)
        for lock in glob.glob(os.path.join(os.path.dirname(os.path.dirname(entry.path)), f"*{key}*.lock")):
            try:
                os.remove(lock)
            except OSError:
                pass
        removed.append(entry)
    return removed
