"""``loop``: pause or resume the training rounds of a model, list its rounds.

    superduper-transformers loop pause MODEL [--by NAME]
    superduper-transformers loop resume MODEL [--by NAME]
    superduper-transformers loop rounds [MODEL]

A paused model starts no round (nor finishes a cut-off one) until resumed; new rows keep
arriving and count toward the first round after. ``runs`` and ``status`` show rounds too.
"""

from __future__ import annotations

import argparse
import getpass
import typing as t

from superduper_transformers.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``loop`` and its subcommands to the main parser's subcommands."""
    p = sub.add_parser("loop", help="pause or resume a model's training rounds; list its rounds")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("pause", "start no round of MODEL until resumed"),
        ("resume", "let rounds of MODEL run"),
    ):
        a = actions.add_parser(name, help=text)
        a.add_argument("model", help="identifier of the LLM")
        a.add_argument("--by", help="who (default: your login name)")
        a.set_defaults(run=_pause if name == "pause" else _resume)
    a = actions.add_parser("rounds", help="the rounds of a model's loops (all models without MODEL)")
    a.add_argument("model", nargs="?", help="identifier of the LLM")
    a.set_defaults(run=_rounds)


def round_lines(db, model: t.Optional[str]) -> t.List[str]:
    """One line per round of ``model``'s loops (``runs`` and ``status`` print them too)."""
    from superduper_transformers import rounds

    prefix = "" if model else "{model}  "
    return [
        f"{prefix.format(model=r.model)}loop {r.loop}  {r.describe()}" for r in rounds.rounds(db, model=model)
    ]


def _set(args, paused: bool) -> int:
    from superduper_transformers import rounds

    db = common.connect(args)
    common.load_llm(db, args.model)  # names the models there are when it is not one
    rounds.set_paused(db, args.model, paused, args.by or getpass.getuser())
    print(f"rounds of {args.model} {'paused' if paused else 'resumed'}")
    return 0


def _pause(args) -> int:
    return _set(args, True)


def _resume(args) -> int:
    return _set(args, False)


def _rounds(args) -> int:
    from superduper_transformers import rounds

    db = common.connect(args)
    if args.model:
        common.load_llm(db, args.model)
    lines = round_lines(db, args.model)
    if args.model and rounds.paused(db, args.model):
        print(f"rounds of {args.model} are paused (`loop resume {args.model}`)")
    print("\n".join(lines) if lines else "no rounds" + (f" of {args.model}" if args.model else ""))
    return 0
