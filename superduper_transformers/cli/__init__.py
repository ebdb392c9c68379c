"""Command line: train from a YAML config, import rows, watch runs, query and export models.

    superduper-transformers train examples/tiny_lora.yaml trainer.max_steps=100
    superduper-transformers import-data rows.jsonl --table facts --valid-fraction 0.1
    superduper-transformers data-cache [--clear [--older-than DAYS]]
    superduper-transformers runs | checkpoints MODEL | status MODEL --watch
    superduper-transformers ask --model NAME "question"
    superduper-transformers export NAME --out DIR [--merge]
    superduper-transformers plot NAME --out run.png | promote NAME CHECKPOINT | rollback NAME
    superduper-transformers delete-checkpoint NAME CHECKPOINT [--force]
    superduper-transformers compare NAME A B --table T --key x [--target y --metric mod:fn]
    superduper-transformers shadow LISTENER [CANDIDATE] | side-by-side LISTENER SHADOW

``--data`` is a folder holding ``demo.db`` and ``artifact_store/`` (the main job's
layout, the default database); ``--db`` (or ``--uri``) and ``--artifact-store`` name
any other datalayer.

Adding a command: write a module in this package with ``register(subparsers)``, which
adds its parser(s) with ``set_defaults(run=function)`` (``function(args) -> int``, the
datalayer from ``common.connect(args)``), and append the module to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")

from superduper_transformers.cli import (  # noqa: E402
    cache,
    common,
    compare_cmd,
    data,
    export_cmd,
    ops,
    query,
    shadow_cmd,
    train,
)
from superduper_transformers.cli.common import CliError, version_line  # noqa: E402

#: The command modules, in the order ``--help`` lists them. One line per module.
COMMANDS = [train, data, cache, query, export_cmd, ops, compare_cmd, shadow_cmd]

__all__ = ["COMMANDS", "CliError", "build_parser", "main", "version_line"]


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog=common.PROG, description=__doc__.splitlines()[0])
    common.add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of ``superduper-transformers`` (and ``python -m superduper_transformers``).

    :return: 0 on success, 2 for a bad command, config or data (the message says what
        to fix; no traceback), 130 when interrupted with Ctrl-C.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train` prints the command that resumes it
    try:
        return args.run(args)
    except CliError as e:
        print(f"{common.PROG} {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\n{common.PROG} {args.command}: interrupted. The database is consistent: a training "
            "resumes from its latest checkpoint when the same `train` command runs again.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
