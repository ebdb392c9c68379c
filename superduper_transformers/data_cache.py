"""The tokenized-data cache on disk: what it holds, and removing what was not used lately.

:func:`superduper_transformers.hf.data.build_dataset` writes one memory-mapped Arrow file
per distinct (rows, tokenization settings) into :func:`data_cache_dir` (datasets' builder
layout: ``generator/default-fingerprint=<key>/``). A large table tokenized under a few
settings fills the disk; nothing else removes them.

Only entries this plugin wrote are ever removed: once an entry is complete, a marker file
(:data:`COMPLETE`) is written into it, and the model it was built for is recorded beside
it (``.owner-<model tag>``), so that deleting a model also removes the rows it tokenized.
A folder without the marker (being built, or another tool's) is listed and left alone,
and so is an entry whose datasets lock is held (a training building or loading it).

Each training that reads an entry marks it used (its folder's modification time), so
"older than N days" means "not trained on for N days". Removing an entry a running
training has open is safe on POSIX systems (its open file stays readable); the next
training with those rows tokenizes them again. Entries are owner-only (tokens are rows).
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import glob
import os
import shutil
import time
import typing as t

from superduper_transformers._private import restrict_permissions

#: datasets' folder of generator-built datasets inside the cache folder.
_BUILDER = "generator"
#: Written into an entry once it is complete: the plugin wrote it, it may remove it.
COMPLETE = ".superduper_transformers"
#: Prefix of the files naming a model (its tag) that trained on an entry.
OWNER_PREFIX = ".owner-"

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


def _folders(cache_dir: t.Optional[str]) -> t.List[str]:
    root = os.path.join(cache_dir or data_cache_dir(), _BUILDER)
    if not os.path.isdir(root):
        return []
    return [p for p in (os.path.join(root, n) for n in os.listdir(root)) if os.path.isdir(p)]


def _is_ours(path: str) -> bool:
    return not os.path.islink(path) and os.path.isfile(os.path.join(path, COMPLETE))


def entries(cache_dir: t.Optional[str] = None) -> t.List[CacheEntry]:
    """The complete tokenized datasets this plugin wrote, least recently used first.

    :param cache_dir: The cache folder (default: ``data_cache_dir()``).
    """
    out = [CacheEntry(p, _size(p), os.path.getmtime(p)) for p in _folders(cache_dir) if _is_ours(p)]
    return sorted(out, key=lambda e: e.last_used)


def others(cache_dir: t.Optional[str] = None) -> t.List[str]:
    """Folders in the cache that are no complete entry of this plugin (being built, or
    another tool's): never removed by it."""
    return sorted(p for p in _folders(cache_dir) if not _is_ours(p))


def _entry_of(cache_file: str) -> t.Optional[str]:
    folder = os.path.dirname(os.path.dirname(cache_file))  # .../<entry>/0.0.0/x.arrow
    return folder if os.path.basename(os.path.dirname(folder)) == _BUILDER else None


def mark_complete(dataset, owner: t.Optional[str] = None) -> None:
    """Mark the entry of ``dataset`` (just built or loaded) as the plugin's, complete and
    used now; record ``owner`` (a model's tag) as one of its users; make it owner-only."""
    for cache_file in getattr(dataset, "cache_files", None) or []:
        folder = _entry_of(cache_file["filename"])
        if folder is None:
            continue
        try:
            if owner:
                open(os.path.join(folder, OWNER_PREFIX + owner), "a").close()
            with open(os.path.join(folder, COMPLETE), "w") as f:
                f.write("A tokenized dataset written by superduper_transformers.\n")
            restrict_permissions(folder)  # tokens are rows
            os.utime(folder)  # marks it used
        except (OSError, ValueError):  # a read-only cache, a link: nothing to record
            pass


def _remove(entry: CacheEntry) -> bool:
    """Remove ``entry`` holding datasets' locks of it; False when a process holds one
    (a training building or loading it)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): datasets' locks cannot be checked
        fcntl = None
    held = []
    try:
        for lock in glob.glob(os.path.join(glob.escape(entry.path), "*.lock")) if fcntl else []:
            held.append(os.open(lock, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0)))
            fcntl.flock(held[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(entry.path, ignore_errors=True)
    except BlockingIOError:
        return False
    finally:
        for fd in held:
            os.close(fd)  # releases its lock
    # datasets' lock files for the entry, beside the builder folder
    key = os.path.basename(entry.path)
    root = os.path.dirname(os.path.dirname(entry.path))
    for lock in glob.glob(os.path.join(glob.escape(root), f"*{glob.escape(key)}*.lock")):
        with contextlib.suppress(OSError):
            os.remove(lock)
    return True


def clear(
    older_than_s: t.Optional[float] = None, cache_dir: t.Optional[str] = None, now: t.Optional[float] = None
) -> t.List[CacheEntry]:
    """Remove cached tokenized datasets: all, or those not used for ``older_than_s`` seconds.

    Only complete entries of this plugin that no process has locked are removed.

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
        if _remove(entry):
            removed.append(entry)
    return removed


def forget_owner(owner: str, cache_dir: t.Optional[str] = None) -> t.List[CacheEntry]:
    """Remove ``owner`` (a model's tag) from the entries it used; remove the entries no
    other model uses (unless locked). Called when the model is deleted.

    :return: the entries removed.
    """
    removed = []
    for entry in entries(cache_dir):
        mark = os.path.join(entry.path, OWNER_PREFIX + owner)
        if not os.path.exists(mark):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(mark)
        if not glob.glob(os.path.join(glob.escape(entry.path), glob.escape(OWNER_PREFIX) + "*")):
            if _remove(entry):
                removed.append(entry)
    return removed
