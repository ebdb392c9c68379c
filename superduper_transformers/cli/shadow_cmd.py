"""``shadow`` and ``side-by-side``: a candidate answers every new row beside the serving listener."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``shadow`` and ``side-by-side`` to the main parser's subcommands.

    :param sub: The ``add_subparsers()`` object of the main parser.
    """
    p = sub.add_parser("shadow", help="a candidate answers every new row beside a serving listener, unserved")
    p.add_argument("listener", help="identifier of the serving listener")
    p.add_argument(
        "candidate", nargs="?", default="candidate", help="alias, checkpoint or step (default: candidate)"
    )
    p.add_argument("--name", help="the shadow listener's identifier (default: LISTENER-shadow)")
    p.set_defaults(run=_shadow)
    p = sub.add_parser(
        "side-by-side", help="store and print the rows a listener and its shadow both answered"
    )
    p.add_argument("listener", help="identifier of the serving listener")
    p.add_argument("shadow", help="identifier of the shadow listener")
    p.add_argument("--target", help="the input table's column of expected answers (for --metric)")
    p.add_argument("--metric", help="module:function called as f(predictions, targets)")
    p.add_argument("--out", default="compare", help="the side-by-side table (default: compare)")
    p.set_defaults(run=_side_by_side)


def _shadow(args: argparse.Namespace) -> int:
    from superduper_transformers.cli.common import connect
    from superduper_transformers.shadow import shadow

    db = connect(args)
    candidate = int(args.candidate) if args.candidate.isdigit() else args.candidate
    return _guarded(
        "shadow",
        lambda: print(
            f"shadow listener `{shadow(db, args.listener, candidate, args.name).identifier}` applied"
        ),
    )


def _side_by_side(args: argparse.Namespace) -> int:
    from superduper_transformers.cli.common import connect
    from superduper_transformers.compare import format_table
    from superduper_transformers.shadow import side_by_side

    db = connect(args)
    return _guarded(
        "side-by-side",
        lambda: print(
            format_table(side_by_side(db, args.listener, args.shadow, args.target, args.metric, args.out))
        ),
    )


def _guarded(command: str, action) -> int:
    from superduper_transformers.checkpoint import CheckpointError
    from superduper_transformers.compare import CompareError
    from superduper_transformers.promote import PromotionError
    from superduper_transformers.shadow import ShadowError

    try:
        action()
    except (ShadowError, CompareError, PromotionError, CheckpointError) as e:
        print(f"superduper-transformers {command}: {e}", file=sys.stderr)
        return 2
    return 0
