"""Command line: query what a training left in the database, and export models.

    python -m superduper_transformers --version
    python -m superduper_transformers --data demo_data checkpoints --model NAME
    python -m superduper_transformers --data demo_data ask --model NAME "question"
    python -m superduper_transformers --data demo_data export NAME --out DIR [--merge]

``--data`` is a folder holding ``demo.db`` and ``artifact_store/`` (the demo's
layout); ``--uri`` and ``--artifact-store`` name any other datalayer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys

from superduper_transformers import cli_ops

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")


def _connect(args):
    from superduper import CFG

    store = (
        args.artifact_store or f"filesystem://{os.path.abspath(os.path.join(args.data, 'artifact_store'))}"
    )
    CFG.artifact_store = store
    from superduper.base import apply as sd_apply

    from superduper_transformers.store.datalayer import connect

    sd_apply.console.quiet = True
    uri = args.uri or f"sqlite:///{os.path.abspath(os.path.join(args.data, 'demo.db'))}"
    # superduper prints a components overview while it builds the datalayer
    with contextlib.redirect_stdout(io.StringIO()):
        return connect(uri, force_apply=True)


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


def main(argv=None) -> int:
    """Entry point of ``superduper-transformers``."""
    parser = argparse.ArgumentParser(prog="superduper-transformers", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--data", default="demo_data", help="folder with demo.db and artifact_store/")
    parser.add_argument("--uri", help="datalayer URI (mongodb://..., sqlite:///...)")
    parser.add_argument("--artifact-store", help="filesystem:///absolute/path of the artifact store")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the LLMs in the database")
    ck = sub.add_parser(
        "checkpoints",
        help="list a model's checkpoints with steps and metrics (* = in use, (best) = best of its run)",
    )
    ck.add_argument("--model", required=True)
    ask = sub.add_parser("ask", help="load a model from the database and answer prompts")
    ask.add_argument("--model", required=True)
    ask.add_argument("prompts", nargs="+")
    ex = sub.add_parser("export", help="write a model's weights and tokenizer to a Hugging Face folder")
    ex.add_argument("model", help="identifier of the LLM")
    ex.add_argument("--out", required=True, help="a new or empty folder to write")
    ex.add_argument("--checkpoint", help="one of the model's checkpoints (default: the one it uses)")
    ex.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    ex.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="fp32")
    cli_ops.add_commands(sub)
    args = parser.parse_args(argv)

    db = _connect(args)
    code = cli_ops.run(args, db)
    if code is not None:
        return code
    if args.command == "models":
        for name in db.show("LLM"):
            print(name)
    elif args.command == "checkpoints":
        from superduper_transformers.checkpoint import best_of_model, list_checkpoints

        adapter = getattr(db.load("LLM", args.model).adapter_id, "identifier", None)
        # The best of each run (by its trainer's `metric_for_best_model`), used or not.
        rows = list_checkpoints(db, args.model)
        best = set()
        for run in {r["experiment_id"] for r in rows}:
            row = best_of_model(db, args.model, run)
            if row is not None:
                best.add(row["identifier"])
        for r in rows:
            mark = "*" if r["identifier"] == adapter else " "
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(r["metrics"].items()) if "loss" in k)
            tag = "  (best)" if r["identifier"] in best else ""
            print(f"{mark} {r['identifier']}  step={r['step']}  {metrics}{tag}")
    elif args.command == "export":
        from superduper_transformers.checkpoint import CheckpointError
        from superduper_transformers.export import MANIFEST, ExportError, export_model

        try:
            out = export_model(db, args.model, args.out, args.checkpoint, merge=args.merge, dtype=args.dtype)
        except (ExportError, CheckpointError) as e:
            print(f"superduper-transformers export: {e}", file=sys.stderr)
            return 2
        files = sorted(f for f in os.listdir(out) if f != MANIFEST)
        print(f"{out}: {', '.join(files)} (+ {MANIFEST})")
    else:
        llm = db.load("LLM", args.model)
        for prompt, answer in zip(args.prompts, llm.predict_batches(args.prompts)):
            print(f"Q: {prompt}\nA: {answer.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
