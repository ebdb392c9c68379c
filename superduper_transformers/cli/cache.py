"""``data-cache [--clear] [--older-than DAYS]``: the tokenized datasets cached on this machine."""

from __future__ import annotations

import os

from superduper_transformers.cli.common import CliError


def register(sub) -> None:
    """Add ``data-cache`` to the subparsers ``sub``."""
    c = sub.add_parser(
        "data-cache",
        help="list (or --clear) the tokenized datasets cached on this machine",
        description="Trainings cache their tokenized rows (one Arrow file per rows + settings) in "
        "$SD_TRANSFORMERS_DATA_CACHE, else <HF_DATASETS_CACHE>/superduper_transformers.",
    )
    c.add_argument("--clear", action="store_true", help="remove entries (all, or see --older-than)")
    c.add_argument(
        "--older-than",
        type=float,
        metavar="DAYS",
        help="with --clear: only entries no training used for this many days",
    )
    c.set_defaults(run=data_cache)


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def data_cache(args) -> int:
    """List the cached tokenized datasets, or remove them with ``--clear``."""
    import time

    from superduper_transformers import data_cache as cache

    if args.older_than is not None and not args.clear:
        raise CliError("--older-than applies to --clear: add --clear to remove those entries.")
    if args.older_than is not None and args.older_than < 0:
        raise CliError(f"--older-than must be a number of days >= 0, got {args.older_than}.")
    folder = cache.data_cache_dir()
    if args.clear:
        older = None if args.older_than is None else args.older_than * 86400
        removed = cache.clear(older)
        kept = cache.entries()
        print(
            f"removed {len(removed)} tokenized dataset(s), {_mb(sum(e.size_bytes for e in removed))}, "
            f"from {folder}; {len(kept)} kept ({_mb(sum(e.size_bytes for e in kept))}; in use by a "
            "training, or used recently)"
        )
    else:
        found = cache.entries()
        now = time.time()
        for e in found:
            print(f"{_mb(e.size_bytes):>10}  used {(now - e.last_used) / 86400:.1f} days ago  {e.path}")
        print(f"{len(found)} tokenized dataset(s), {_mb(sum(e.size_bytes for e in found))} in {folder}")
    others = cache.others()
    if others:
        print(
            f"{len(others)} other folder(s) in {os.path.dirname(others[0])} are left alone: not written by "
            "this plugin, or being written by a training (an entry is marked when complete)."
        )
    return 0
