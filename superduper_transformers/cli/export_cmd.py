"""``export``: write a model's weights and tokenizer to a Hugging Face folder, or to a GGUF
file with an Ollama Modelfile."""

from __future__ import annotations

import os

from superduper_transformers.cli.common import CliError, connect


def register(sub) -> None:
    """Add ``export`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "export",
        help="write a model's weights and tokenizer to a Hugging Face folder, or a GGUF file for "
        "llama.cpp / Ollama",
    )
    p.add_argument("model", help="identifier of the LLM")
    p.add_argument("--out", required=True, help="a new or empty folder to write")
    p.add_argument("--checkpoint", help="one of the model's checkpoints (default: the one it uses)")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    p.add_argument(
        "--format",
        choices=["hf", "gguf"],
        default="hf",
        help="hf: a Hugging Face folder; gguf: the merged model as one GGUF file with an Ollama "
        "Modelfile (see docs/gguf.md)",
    )
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="weights of format hf (default fp32)")
    p.add_argument(
        "--quantization", choices=["f16", "bf16", "q8_0"], help="weights of format gguf (default f16)"
    )
    p.set_defaults(run=export)


def export(args) -> int:
    from superduper_transformers.checkpoint import CheckpointError
    from superduper_transformers.export import MANIFEST, ExportError, export_model, gguf_instructions

    db = connect(args)
    try:
        out = export_model(
            db,
            args.model,
            args.out,
            args.checkpoint,
            merge=args.merge,
            dtype=args.dtype,
            format=args.format,
            quantization=args.quantization,
        )
    except (ExportError, CheckpointError, ImportError) as e:
        raise CliError(str(e)) from e
    files = sorted(f for f in os.listdir(out) if f != MANIFEST)
    print(f"{out}: {', '.join(files)} (+ {MANIFEST})")
    if args.format == "gguf":
        print("\n".join(gguf_instructions(out)))
    return 0
