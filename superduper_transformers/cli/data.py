"""``import-data FILE.jsonl|csv --table NAME``: rows from a file into a table of the db.

Every column becomes a ``str`` field (a ``bool`` one when a ``.jsonl`` file holds only
true/false in it: the label of KTO rows), with ``_fold`` (``train``/``valid``) that training
reads. The file is read twice, one row at a time (it may be larger than the memory): first
checked whole before the table is touched, so a bad line, missing columns or a bad ``_fold``
leave the database as it was; then inserted in batches of :data:`BATCH_ROWS`.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses as dc
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


#: Rows per insert: the file is streamed, so memory stays the same however long it is.
BATCH_ROWS = 1000
#: The longest CSV field accepted, in characters (Python's default is 128 Ki): a row may
#: hold a long document.
MAX_CSV_FIELD = 64 * 2**20
#: Tables of superduper's metadata and of the plugin's records: never a place for rows.
#: (superduper names every component's table after its class, with a capital letter.)
RESERVED_TABLES = (
    "Table",
    "Job",
    "Deployment",
    "ArtifactRelations",
    "ParentChildAssociations",
    "LLM",
    "LLMTrainer",
    "Checkpoint",
    "TrainingRun",
    "Promotions",
    "training_history",
)


def check_table_name(name: str, existing: t.Iterable[str] = ()) -> None:
    """Refuse a ``--table`` that is superduper's or the plugin's (naming it and the fix).

    SQLite compares table names without case: ``job`` is ``Job``.

    :param existing: The tables of the database (``db.show("Table")``).
    """
    reserved = {n.lower(): n for n in [*RESERVED_TABLES, *(e for e in existing if e[:1].isupper())]}
    why = None
    if not name:
        why = "is empty"
    elif name.startswith("_"):
        why = "starts with `_`, which superduper keeps for its own names"
    elif name[:1].isupper():
        why = "starts with a capital letter, as superduper's own tables and every component's table do"
    elif name.lower() in reserved:
        why = f"is the table `{reserved[name.lower()]}` of superduper or of this plugin (names compare without case)"
    if why:
        fix = name.lstrip("_").lower() or "rows"
        fix = fix if fix.lower() not in reserved else f"{fix}_rows"
        raise CliError(f"`--table`={name!r} {why}: choose another name, e.g. `--table {fix}`.")


def read_rows(path: str) -> t.Iterator[t.Tuple[int, t.Dict[str, str]]]:
    """``(line, row)`` of a ``.jsonl`` or ``.csv`` file, values as strings, one at a time.

    UTF-8 (a byte order mark is dropped); a ``.csv`` needs a header line.

    :raises CliError: naming the file, the line and the fix.
    """
    if not os.path.isfile(path):
        raise CliError(f"{path}: no such file.")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".csv"):
        raise CliError(f"{path}: unknown format {ext or '(no extension)'!r}; give a .jsonl or a .csv file.")
    with open(path, "rb") as f:
        lines = _text_lines(path, f)
        yield from _read_jsonl(path, lines) if ext == ".jsonl" else _read_csv(path, lines)


def _text_lines(path: str, f) -> t.Iterator[str]:
    """The lines of the binary file ``f`` decoded one by one, so that bad bytes have a line."""
    for n, raw in enumerate(f, 1):
        if n == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]  # else it becomes part of the first column's name
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CliError(
                f"{path}, line {n}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the "
                f"line). Save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed"
                f"{os.path.splitext(path)[1]}` if it is Latin-1."
            ) from e


def _read_jsonl(path: str, lines) -> t.Iterator[t.Tuple[int, t.Dict[str, str]]]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"{path}, line {n}: not JSON ({e.msg}); each line must be one JSON object.") from e
        if not isinstance(row, dict):
            raise CliError(f"{path}, line {n}: a JSON object ({{...}}) is needed, got {type(row).__name__}.")
        # Text stays text and booleans (a KTO label) stay booleans; other values become JSON text.
        yield n, {str(k): v if isinstance(v, (str, bool)) else json.dumps(v) for k, v in row.items()}


def _read_csv(path: str, lines) -> t.Iterator[t.Tuple[int, t.Dict[str, str]]]:
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_CSV_FIELD)
    reader = csv.DictReader(lines)
    try:
        if not reader.fieldnames:
            raise CliError(f"{path}: empty; a .csv file needs a header line with the column names.")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            if None in row or any(v is None for v in row.values()):
                raise CliError(
                    f"{path}, line {reader.line_num}: {len(reader.fieldnames)} columns in the header "
                    f"({', '.join(reader.fieldnames)}), another number here."
                )
            yield reader.line_num, dict(row)
    except csv.Error as e:
        if "field larger than field limit" in str(e):
            raise CliError(
                f"{path}, line {reader.line_num + 1}: a field is longer than {MAX_CSV_FIELD:,} characters "
                "(or a quote is not closed, so the rest of the file reads as one field). Close the "
                "quote, or split the text over several rows."
            ) from e
        raise CliError(f"{path}, line {reader.line_num}: not valid CSV ({e}); fix the line.") from e
    finally:
        csv.field_size_limit(limit)


@dc.dataclass
class FileSummary:
    """What the first read of a file found (its rows are not kept).

    :param columns: Every column, in the order of first appearance.
    :param rows: The number of rows.
    :param train: The number of rows in the train fold before ``--valid-fraction``.
    :param types: The field type of each column: ``bool`` for JSON booleans only, else ``str``.
    """

    columns: t.List[str]
    rows: int
    train: int
    types: t.Dict[str, str] = dc.field(default_factory=dict)


def fold_of(row: t.Mapping[str, str], fold: t.Optional[str], path: str, line: int) -> str:
    """The ``_fold`` of a row: ``fold``, else the file's, else train."""
    value = fold or row.get("_fold") or "train"
    if value not in FOLDS:
        raise CliError(f"{path}, line {line}: `_fold`={value!r}; it must be one of {FOLDS}.")
    return value


def summarise(path: str, fold: t.Optional[str]) -> FileSummary:
    """Read ``path`` once, checking every row, keeping none; the columns and counts."""
    counts: t.Dict[str, int] = {}
    flags: t.Dict[str, t.Tuple[int, t.Any]] = {}  # column -> the first line and value of a bool, or not
    rows = train = 0
    for line, row in read_rows(path):
        rows += 1
        train += fold_of(row, fold, path, line) == "train"
        for column, value in row.items():
            counts[column] = counts.get(column, 0) + 1
            first = flags.setdefault(column, (line, value))
            if isinstance(first[1], bool) != isinstance(value, bool):
                raise CliError(
                    f"{path}, line {line}: column `{column}` holds {value!r}, and {first[1]!r} on line "
                    f"{first[0]}: a column is all booleans (true/false, e.g. a KTO label) or all text. "
                    "Fix the rows."
                )
    if not rows:
        raise CliError(f"{path}: no rows.")
    columns = list(counts)
    bad = [c for c in columns if c.startswith("_") and c != "_fold"]
    if bad:
        raise CliError(
            f"{path}: column(s) {bad} start with `_`, which superduper keeps for its own fields "
            "(only `_fold` is read): rename them."
        )
    partial = [c for c in columns if counts[c] < rows and c != "_fold"]
    if partial:  # read again to name the first row without one of them
        for line, row in read_rows(path):
            missing = [c for c in partial if c not in row]
            if missing:
                raise CliError(
                    f"{path}, line {line}: missing column(s) {missing} (other rows have them); every "
                    "row needs the same columns."
                )
    types = {c: "bool" if isinstance(flags[c][1], bool) else "str" for c in columns}
    return FileSummary(columns, rows, train, {**types, "_fold": "str"})


def import_data(args) -> int:
    from superduper import Table

    if not 0.0 <= args.valid_fraction < 1.0:
        raise CliError(f"`--valid-fraction` must be in [0, 1), got {args.valid_fraction}.")
    check_table_name(args.table)
    found = summarise(args.file, args.fold)  # every problem of the file, before the db is touched
    columns = found.columns + ([] if "_fold" in found.columns else ["_fold"])
    # The same choice as sampling the list of training rows, without holding it.
    chosen = random.Random(args.seed).sample(range(found.train), round(args.valid_fraction * found.train))
    to_valid = set(chosen)
    db = connect(args)
    tables = db.show("Table")
    check_table_name(args.table, tables)
    if args.table in tables:
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
            db.apply(Table(args.table, fields={c: found.types.get(c, "str") for c in columns}), force=True)
    counts = dict.fromkeys(FOLDS, 0)
    batch: t.List[t.Dict[str, str]] = []
    train = 0
    for line, row in read_rows(args.file):
        row["_fold"] = fold_of(row, args.fold, args.file, line)
        if row["_fold"] == "train":
            row["_fold"] = "valid" if train in to_valid else "train"
            train += 1
        counts[row["_fold"]] += 1
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            db[args.table].insert(batch)
            batch = []
    if batch:
        db[args.table].insert(batch)
    print(f"{found.rows} rows into `{args.table}` ({counts['train']} train, {counts['valid']} valid)")
    return 0
