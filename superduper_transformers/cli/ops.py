"""Command line for operating trained models: plot a run, promote / roll back / delete checkpoints.

    superduper-transformers plot MODEL --out run.png [--run EXPERIMENT_ID]
    superduper-transformers promote MODEL CHECKPOINT [--alias prod] [--by NAME]
    superduper-transformers rollback MODEL [--alias prod] [--by NAME]
    superduper-transformers promotions MODEL
    superduper-transformers delete-checkpoint MODEL CHECKPOINT [--force] [--by NAME]

``CHECKPOINT`` is a checkpoint identifier, an alias of the model, or a step.
:func:`register` adds the subcommands to the main parser; each runs through :func:`run`.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import typing as t


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plot``, ``promote``, ``rollback``, ``promotions`` and ``delete-checkpoint`` to the
    main parser's subcommands.

    :param sub: The ``add_subparsers()`` object of the main parser.
    """
    pl = sub.add_parser(
        "plot", help="plot a run's training loss and eval metrics over steps (needs matplotlib)"
    )
    pl.add_argument("model", help="identifier of the LLM")
    pl.add_argument("--out", required=True, help="the image file to write, e.g. run.png")
    # dest `experiment`: `run` is the command's function (`set_defaults(run=...)`)
    pl.add_argument(
        "--run",
        dest="experiment",
        help="experiment id of the run (default: the one whose checkpoint is in use)",
    )
    pr = sub.add_parser("promote", help="point a model (or one of its aliases) at another stored checkpoint")
    pr.add_argument("model", help="identifier of the LLM")
    pr.add_argument("checkpoint", help="checkpoint identifier, alias or step")
    pr.add_argument("--alias", help="move this alias (e.g. prod, candidate) instead of the model's pointer")
    pr.add_argument("--by", help="who promotes (default: your login name)")
    rb = sub.add_parser(
        "rollback", help="return a model (or alias) to its checkpoint before the last promotion"
    )
    rb.add_argument("model", help="identifier of the LLM")
    rb.add_argument("--alias", help="roll back this alias instead of the model's pointer")
    rb.add_argument("--by", help="who rolls back (default: your login name)")
    ps = sub.add_parser("promotions", help="a model's aliases and the history of what it used when")
    ps.add_argument("model", help="identifier of the LLM")
    dc = sub.add_parser(
        "delete-checkpoint",
        help="delete a stored checkpoint (refuses the one in use, and aliased or rollback targets "
        "without --force)",
    )
    dc.add_argument("model", help="identifier of the LLM")
    dc.add_argument("checkpoint", help="checkpoint identifier, alias or step")
    dc.add_argument(
        "--force",
        action="store_true",
        help="delete it even when an alias points at it (the alias is removed) or a rollback would "
        "return to it; never the checkpoint in use",
    )
    dc.add_argument("--by", help="who deletes (default: your login name)")
    for parser in (pl, pr, rb, ps, dc):
        parser.set_defaults(run=_run_connected)


def _run_connected(args: argparse.Namespace) -> int:
    """Connect to the datalayer the global options name, then :func:`run` the command."""
    from superduper_transformers.cli.common import connect

    return run(args, connect(args))


def run(args: argparse.Namespace, db: t.Any) -> t.Optional[int]:
    """Run the command of ``args`` if it is one of these; None when it is not.

    :param args: The parsed command line.
    :param db: The datalayer.
    :return: the exit status (0, or 2 with the error on stderr), or None.
    """
    if args.command not in _RUN:
        return None
    from superduper_transformers.checkpoint import CheckpointError
    from superduper_transformers.history import HistoryError
    from superduper_transformers.promote import PromotionError

    try:
        _RUN[args.command](args, db)
    except (PromotionError, HistoryError, CheckpointError, ImportError, ValueError) as e:
        print(f"superduper-transformers {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


def _plot(args, db) -> None:
    from superduper_transformers.plot import plot_history

    data = plot_history(db, args.model, args.out, experiment_id=args.experiment)
    print(
        f"{data.path}: run {data.experiment_id}, {', '.join(data.panels)}; checkpoints at {data.checkpoints}"
    )


def _promote(args, db) -> None:
    from superduper_transformers.promote import promote

    _print_entry(promote(db, args.model, args.checkpoint, alias=args.alias, by=args.by))


def _rollback(args, db) -> None:
    from superduper_transformers.promote import rollback

    _print_entry(rollback(db, args.model, alias=args.alias, by=args.by))


def _promotions(args, db) -> None:
    from superduper_transformers.promote import check_model, promotions

    check_model(db, args.model)
    record = promotions(db, args.model)
    in_use = getattr(db.load("LLM", args.model).adapter_id, "identifier", None)
    print(f"in use: {in_use}")
    for alias, identifier in sorted(record.aliases.items()):
        print(f"{alias}: {identifier}")
    for entry in record.history:
        _print_entry(entry)


def _delete_checkpoint(args, db) -> None:
    from superduper_transformers.promote import delete_checkpoint

    done = delete_checkpoint(db, args.model, args.checkpoint, force=args.force, by=args.by)
    removed = done["aliases_removed"]
    print(f"deleted {done['checkpoint']}" + (f" and its aliases {', '.join(removed)}" if removed else ""))


def _print_entry(entry: t.Dict[str, t.Any]) -> None:
    when = datetime.datetime.fromtimestamp(entry["time"], datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
    run = f" (run {entry['run']})" if entry.get("run") else ""  # a training's first checkpoint
    line = (
        f"{when}  {entry['by']}  {entry['action']} {entry['pointer']}: {entry['from']} -> {entry['to']}{run}"
    )
    if entry.get("candidate"):  # a gate's rejection: the alias stayed
        line = f"{when}  {entry['by']}  {entry['action']} {entry['pointer']}: kept {entry['from']}, refused {entry['candidate']}"
    if entry.get("score_candidate") is not None:
        line += (
            f"  (candidate {entry['score_candidate']:.4g} vs {entry['score_prod']:.4g}, "
            f"margin {entry.get('margin', 0.0):.4g}, {entry.get('metric')})"
        )
    print(line)


_RUN = {
    "plot": _plot,
    "promote": _promote,
    "rollback": _rollback,
    "promotions": _promotions,
    "delete-checkpoint": _delete_checkpoint,
}
