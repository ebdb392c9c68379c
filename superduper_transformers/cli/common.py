"""What every command shares: the global options, the connection to the db, errors."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import sys
import typing as t

PROG = "superduper-transformers"


class CliError(Exception):
    """A problem the user fixes (bad command, config, file or data): printed without a
    traceback, exit code 2. The message names what is wrong and the fix."""


def version_line() -> str:
    """``superduper_transformers <version> (<folder of the imported package>)``."""
    import superduper_transformers

    return (
        f"superduper_transformers {superduper_transformers.__version__} "
        f"({os.path.dirname(os.path.abspath(superduper_transformers.__file__))})"
    )


class _Version(argparse.Action):
    """``--version``: one line as it is (argparse's own version action wraps it to the
    terminal width, which splits a long package path)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(
            option_strings, dest, nargs=0, help="print the version and the folder of the package, then exit"
        )

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """``--version``, ``--data``, ``--db``/``--uri``, ``--artifact-store``."""
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--data", default="demo_data", help="folder with demo.db and artifact_store/")
    parser.add_argument(
        "--db", "--uri", dest="uri", help="datalayer URI (sqlite:////abs/path.db, mongodb://...)"
    )
    parser.add_argument("--artifact-store", help="filesystem:///absolute/path of the artifact store")


def default_uri(args) -> str:
    """The embedded SQLite database of the main job, under ``--data``."""
    return f"sqlite:///{os.path.abspath(os.path.join(args.data, 'demo.db'))}"


def connect(args, uri: str = None, artifact_store: str = None):
    """The datalayer named by the options (or by ``uri``/``artifact_store`` from a config).

    Command-line options win over the config's; the default is the main job's db.
    """
    from superduper import CFG

    if "SUPERDUPER_LOG_LEVEL" not in os.environ or CFG.log_level == "USER":
        # The package imported superduper before this module could set the variable:
        # USER (its default) prints every component tree an apply writes.
        CFG.log_level = os.environ.get("SUPERDUPER_LOG_LEVEL", "SUCCESS")
    store = (
        args.artifact_store
        or artifact_store
        or f"filesystem://{os.path.abspath(os.path.join(args.data, 'artifact_store'))}"
    )
    CFG.artifact_store = store
    from superduper.base import apply as sd_apply

    from superduper_transformers.store.datalayer import connect as sd_connect

    sd_apply.console.quiet = True
    uri = args.uri or uri or default_uri(args)
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :])
        if folder and not os.path.isdir(folder):
            raise CliError(
                f"the database folder {folder} does not exist (from the db URI {redact_uri(uri)!r})."
            )
    # superduper prints a components overview while it builds the datalayer
    with contextlib.redirect_stdout(io.StringIO()):
        return sd_connect(uri, force_apply=True)


#: An argument holding a URI: ``URI``, ``--db=URI`` or a config override ``db=URI``.
_URI_ARG = re.compile(r"^(?P<head>[^=]*=)?(?P<uri>[a-zA-Z][\w+.-]*://.*)$", re.S)


def shown_command(argv: t.Sequence[str]) -> t.Tuple[str, bool]:
    """``(the command line of argv, whether a password was hidden)``, safe to print.

    A URI given as an argument (``--db mongodb://user:pw@host/db``, ``--db=...``,
    ``db=...``) is shown with ``***`` for its password and query (``redact_uri``):
    the line goes to terminals, logs and CI output.
    """
    shown = []
    for arg in [PROG, *argv]:
        m = _URI_ARG.match(arg)
        if m:
            arg = (m.group("head") or "") + redact_uri(m.group("uri"))
        shown.append(arg)
    return shlex.join(shown), shown != [PROG, *argv]


def redact_uri(uri: t.Optional[str]) -> str:
    """``settings.redact_uri`` (imported when used: the package imports slowly)."""
    from superduper_transformers.settings import redact_uri as redact

    return redact(uri)


def is_tty() -> bool:
    """Whether a person watches (progress bars are drawn only then)."""
    return sys.stderr.isatty()


def load_llm(db, name: str):
    """``db.load("LLM", name)``, or a :class:`CliError` listing the models there are."""
    models = db.show("LLM")
    if name not in models:
        raise CliError(f"no model `{name}` in the database; models: {sorted(models) or 'none'}.")
    return db.load("LLM", name)
