"""``import-data FILE.jsonl|csv --table NAME``: rows from a file into a table of the db;
``data-cache [--clear] [--older-than DAYS]``: the tokenized datasets cached on this machine.

Every column becomes a ``str`` field (a ``bool`` one when a ``.jsonl`` file holds only
true/false in it: the label of KTO rows), with ``_fold`` (``train``/``valid``) that training
reads. The file is read and checked whole before the table is touched: a bad line,
missing columns or a bad ``_fold`` leave the database as it was.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import typing as t

from superduper_transformers.cli.common import CliError, connect

FOLDS = ("train", "valid")


def register(sub) -> None:
    """Add ``import-data`` to the subparsers ``sub``."""
    p = sub.add_parser("import-data", help="insert the rows of a .jsonl or .csv file into a table")
    p.add_argument("file", help="a .jsonl (one JSON object a line) or .csv file with a header")
    p.add_argument("--table", required=True, help="the table (created when new)")
    p.add_argument(
        "--fold",
        choices=FOLDS,
        help="the `_fold` of every row (default: the file's `_fold` column, else train)",
    )
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="put this fraction of the rows (chosen with --seed) in the `valid` fold",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --valid-fraction choice")
    p.set_defaults(run=import_data)
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

    from superduper_transformers.hf import data_cache as cache

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
            f"from {folder}; {len(kept)} kept ({_mb(sum(e.size_bytes for e in kept))})"
        )
        return 0
    found = cache.entries()
    now = time.time()
    for e in found:
        print(f"{_mb(e.size_bytes):>10}  used {(now - e.last_used) / 86400:.1f} days ago  {e.path}")
    print(f"{len(found)} tokenized dataset(s), {_mb(sum(e.size_bytes for e in found))} in {folder}")
    return 0


def read_rows(path: str) -> t.List[t.Dict[str, str]]:
    """The rows of a ``.jsonl`` or ``.csv`` file, values as strings.

    :raises CliError: naming the file, the line and the fix.
    """
    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise CliError(f"{path}: unknown format {ext or '(no extension)'!r}; give a .jsonl or a .csv file.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = _read_jsonl(path, f) if ext == ".jsonl" else _read_csv(path, f)
    if not rows:
        raise CliError(f"{path}: no rows.")
    return rows


def _read_jsonl(path: str, f) -> t.List[t.Dict[str, str]]:
    rows = []
    for n, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"{path}, line {n}: not JSON ({e.msg}); each line must be one JSON object.") from e
        if not isinstance(row, dict):
            raise CliError(f"{path}, line {n}: a JSON object ({{...}}) is needed, got {type(row).__name__}.")
        # Text stays text and booleans (a KTO label) stay booleans; other values become JSON text.
        rows.append({str(k): v if isinstance(v, (str, bool)) else json.dumps(v) for k, v in row.items()})
    return rows


def _read_csv(path: str, f) -> t.List[t.Dict[str, str]]:
    reader = csv.DictReader(f)
    if not reader.fieldnames:
        raise CliError(f"{path}: empty; a .csv file needs a header line with the column names.")
    rows = []
    for n, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
            raise CliError(
                f"{path}, line {n}: {len(reader.fieldnames)} columns in the header "
                f"({', '.join(reader.fieldnames)}), another number here."
            )
        rows.append(dict(row))
    return rows


def assign_folds(rows, fold: t.Optional[str], valid_fraction: float, seed: int, path: str) -> None:
    """Set ``_fold`` on every row: ``fold``, else the file's, else train; then move
    ``valid_fraction`` of the training rows to ``valid``."""
    if not 0.0 <= valid_fraction < 1.0:
        raise CliError(f"`--valid-fraction` must be in [0, 1), got {valid_fraction}.")
    for n, row in enumerate(rows, 1):
        row["_fold"] = fold or row.get("_fold") or "train"
        if row["_fold"] not in FOLDS:
            raise CliError(f"{path}, row {n}: `_fold`={row['_fold']!r}; it must be one of {FOLDS}.")
    if valid_fraction:
        train = [r for r in rows if r["_fold"] == "train"]
        for row in random.Random(seed).sample(train, round(valid_fraction * len(train))):
            row["_fold"] = "valid"


def column_types(rows, columns: t.Sequence[str], path: str) -> t.Dict[str, str]:
    """``bool`` for a column of JSON booleans only (a KTO label), else ``str``.

    :raises CliError: for a column with booleans in some rows and other values in others.
    """
    types = {}
    for c in columns:
        flags = [isinstance(r[c], bool) for r in rows]
        if any(flags) and not all(flags):
            n = flags.index(not flags[0]) + 1
            raise CliError(
                f"{path}, row {n}: column `{c}` holds {rows[n - 1][c]!r}, and {rows[0][c]!r} in row 1: a "
                "column is all booleans (true/false, e.g. a KTO label) or all text. Fix the rows."
            )
        types[c] = "bool" if all(flags) else "str"
    return types


def import_data(args) -> int:
    from superduper import Table

    rows = read_rows(args.file)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for n, row in enumerate(rows, 1):
        missing = [c for c in columns if c not in row and c != "_fold"]
        if missing:
            raise CliError(
                f"{args.file}, row {n}: missing column(s) {missing} (other rows have them); every row "
                "needs the same columns."
            )
    assign_folds(rows, args.fold, args.valid_fraction, args.seed, args.file)
    if "_fold" not in columns:
        columns.append("_fold")
    types = column_types(rows, columns, args.file)
    db = connect(args)
    if args.table in db.show("Table"):
        fields = set(db.load("Table", args.table).fields)
        missing = [c for c in columns if c not in fields]
        if missing:
            raise CliError(
                f"table `{args.table}` exists without the column(s) {missing} of {args.file}; its columns: "
                f"{sorted(f for f in fields if not f.startswith('_') or f == '_fold')}. Rename the "
                "columns in the file or import into a new table."
            )
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # superduper prints the component tree
            db.apply(Table(args.table, fields=types), force=True)
    db[args.table].insert(rows)
    counts = {f: sum(r["_fold"] == f for r in rows) for f in FOLDS}
    print(f"{len(rows)} rows into `{args.table}` ({counts['train']} train, {counts['valid']} valid)")
    return 0
