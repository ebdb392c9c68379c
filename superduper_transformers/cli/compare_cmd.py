"""``compare``: answer the same rows with two checkpoints or aliases, store and print them side by side."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``compare`` to the main parser's subcommands.

    :param sub: The ``add_subparsers()`` object of the main parser.
    """
    p = sub.add_parser(
        "compare", help="answer a table's rows with two checkpoints/aliases; store both answers and a score"
    )
    p.add_argument("model", help="identifier of the LLM")
    p.add_argument("a", help="checkpoint identifier, alias (e.g. prod) or step")
    p.add_argument("b", help="checkpoint identifier, alias (e.g. candidate) or step")
    p.add_argument("--table", required=True, help="the table of input rows")
    p.add_argument("--key", required=True, help="the column of prompts")
    p.add_argument("--target", help="the column of expected answers (for --metric)")
    p.add_argument("--metric", help="module:function called as f(predictions, targets)")
    p.add_argument("--out", default="compare", help="the side-by-side table (default: compare)")
    p.add_argument("--limit", type=int, help="answer only the first N rows")
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from superduper_transformers.checkpoint import CheckpointError
    from superduper_transformers.cli.common import connect
    from superduper_transformers.compare import CompareError, compare, format_table
    from superduper_transformers.promote import PromotionError

    db = connect(args)
    try:
        result = compare(
            db,
            args.model,
            args.a,
            args.b,
            table=args.table,
            key=args.key,
            target=args.target,
            metric=args.metric,
            out=args.out,
            limit=args.limit,
        )
    except (CompareError, PromotionError, CheckpointError) as e:
        print(f"superduper-transformers compare: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    return 0
