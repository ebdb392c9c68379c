"""Export a trained ``LLM`` out of the datalayer into a standard Hugging Face folder.

- An adapter checkpoint is written as a plain peft folder (``adapter_config.json``,
  ``adapter_model.safetensors``, tokenizer files), loadable with
  ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir)``.
- With ``merge=True`` the adapter is merged into the base (``merge_and_unload``) and the
  whole model is saved with safetensors: ``AutoModelForCausalLM.from_pretrained(out_dir)``
  loads it without peft. After QLoRA the base is loaded *unquantized* for the merge.
- A full fine-tune checkpoint (no ``adapter_config.json``) is exported as its weights.
- With ``format="gguf"`` the merged model is written as one GGUF file (f16, bf16 or q8_0,
  tokenizer and chat template in its metadata) for llama.cpp, Ollama and LM Studio, with an
  Ollama ``Modelfile`` beside it (see ``docs/gguf.md``). An architecture or tokenizer that
  cannot be written is refused before anything is.

Only the weights and the tokenizer leave the checkpoint (no optimizer or trainer state).
The folder gets a ``manifest.json`` (``{file: [size, sha256]}`` of every other file,
as a checkpoint's manifest) and is written under a temporary name beside ``out_dir`` and
renamed into place, so a failed export never leaves a half-written ``out_dir``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import typing as t
import uuid

from superduper import logging

from superduper_transformers._bars import progress_bar
from superduper_transformers._optional import require
from superduper_transformers._private import DIR_MODE, restrict_permissions
from superduper_transformers.checkpoint import file_manifest, list_checkpoints, load_checkpoint
from superduper_transformers.hf import loading
from superduper_transformers.hf.gguf_file import QUANTIZATIONS

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: The precisions an export can be written in.
DTYPES = ("bf16", "fp16", "fp32")
#: The formats an export can be written in: a Hugging Face folder, or one GGUF file.
FORMATS = ("hf", "gguf")
#: The Ollama Modelfile written beside a GGUF export.
MODELFILE = "Modelfile"
#: The manifest of an exported folder (it lists every other file of the folder).
MANIFEST = "manifest.json"
#: Weights files of a peft adapter, as peft writes them.
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class ExportError(ValueError):
    """The export cannot be done as asked (names the field, the value and the fix)."""


def _torch_dtype(dtype: t.Optional[str]):
    import torch

    name = dtype or "fp32"
    if name not in DTYPES:
        raise ExportError(f"`dtype`={dtype!r} is not one of {', '.join(DTYPES)}: pick one (default fp32).")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def _check_out_dir(out_dir: str) -> str:
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        what = "a folder that is not empty" if os.path.isdir(out_dir) else "a file"
        raise ExportError(
            f"`out_dir`={out_dir!r} is {what}: an export never overwrites anything. "
            "Give a new or empty folder, or remove this one first."
        )
    return out_dir


@contextlib.contextmanager
def _checkpoint_copy(db: Datalayer, llm, checkpoint: t.Optional[str]) -> t.Iterator[t.Tuple[str, str]]:
    """``(identifier, private verified copy of its folder)`` of the checkpoint to export,
    for the ``with`` block (see ``Checkpoint.verified_copy``)."""
    if checkpoint is None:
        if llm.adapter_id is None:
            raise ExportError(
                f"LLM `{llm.identifier}` has no trained checkpoint (`adapter_id` is None): "
                "train it first, or pass `checkpoint=` (CLI: --checkpoint) naming one of its "
                "checkpoints."
            )
        with llm.verified_adapter() as path:
            yield getattr(llm.adapter_id, "identifier", str(llm.adapter_id)), path
        return
    rows = list_checkpoints(db, llm.identifier)
    if checkpoint not in {r["identifier"] for r in rows}:
        known = ", ".join(r["identifier"] for r in rows) or "none"
        raise ExportError(
            f"`checkpoint`={checkpoint!r} is not a checkpoint of LLM `{llm.identifier}` "
            f"(its checkpoints: {known}). Pick one of them (`list_checkpoints`, CLI: "
            "`checkpoints --model`), or leave it out to export the one the LLM uses."
        )
    with load_checkpoint(db, checkpoint, verify=False).verified_copy() as path:
        yield checkpoint, path


def _base_load_kwargs(llm, dtype) -> t.Dict[str, t.Any]:
    """Loading settings of the LLM's base, unquantized and on the CPU.

    The merge needs full-precision base weights: merging into 4/8-bit weights would
    round the adapter away (and bitsandbytes layers are not plain ``nn.Linear``).
    """
    kwargs = llm.model_load_kwargs()
    for key in ("quantization_config", "device_map", "torch_dtype", "load_in_4bit", "load_in_8bit"):
        kwargs.pop(key, None)
    kwargs["dtype"] = dtype
    return kwargs


def _write_adapter(path: str, out_dir: str, dtype) -> None:
    """The adapter config and weights (as safetensors, cast to ``dtype``)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copy2(os.path.join(path, "adapter_config.json"), os.path.join(out_dir, "adapter_config.json"))
    weights = next((w for w in _ADAPTER_WEIGHTS if os.path.isfile(os.path.join(path, w))), None)
    if weights is None:
        raise ExportError(
            f"checkpoint folder {path} has adapter_config.json but no adapter weights "
            f"({' or '.join(_ADAPTER_WEIGHTS)}): export another checkpoint (`checkpoint=`)."
        )
    full = os.path.join(path, weights)
    state = load_file(full) if weights.endswith(".safetensors") else torch.load(full, weights_only=True)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})


def _merged_model(llm, path: str):
    """The whole model in float32: the adapter merged into the unquantized base, or a full
    fine-tune's weights."""
    import torch

    # Load and merge in fp32, cast once at the end: merging in half precision adds a
    # second rounding of the base weights.
    kwargs = _base_load_kwargs(llm, torch.float32)
    if loading.is_adapter_dir(path):
        from peft import PeftModel

        return PeftModel.from_pretrained(loading.load_causal_lm(kwargs), path).merge_and_unload()
    kwargs["pretrained_model_name_or_path"] = path  # a full fine-tune: its own weights
    return loading.load_causal_lm(kwargs)


def _write_weights(llm, path: str, out_dir: str, dtype) -> None:
    """Full weights (see :func:`_merged_model`), cast to ``dtype``, as safetensors."""
    model = _merged_model(llm, path).to(dtype)
    model.config.dtype = dtype  # the saved config names the dtype the weights are in
    model.save_pretrained(out_dir, safe_serialization=True)


def _check_format(format: str, dtype: t.Optional[str], quantization: t.Optional[str]) -> None:
    """Refuse settings that do not go together, all at once."""
    issues = []
    if format not in FORMATS:
        issues.append(f"`format`={format!r} is not one of {', '.join(FORMATS)}.")
    if format == "gguf" and dtype is not None:
        issues.append(f"`dtype`={dtype!r} applies to format `hf`; a GGUF export takes `quantization`.")
    if format == "gguf" and quantization not in (None, *QUANTIZATIONS):
        issues.append(
            f"`quantization`={quantization!r} is not one of {', '.join(QUANTIZATIONS)} (default f16)."
        )
    if format == "hf" and quantization is not None:
        issues.append(f"`quantization`={quantization!r} applies to format `gguf`; format `hf` takes `dtype`.")
    if issues:
        raise ExportError(" ".join(issues))


def _export_tokenizer(llm, path: str):
    """The tokenizer saved with the checkpoint, else the LLM's."""
    tokenizer_kwargs = llm.tokenizer_load_kwargs()
    if loading.has_tokenizer(path):
        tokenizer_kwargs["pretrained_model_name_or_path"] = path
    return loading.load_tokenizer(tokenizer_kwargs)


def _gguf_plan(llm, path: str, tokenizer, quantization: str, out_dir: str) -> t.Dict[str, t.Any]:
    """Everything of a GGUF export that can be decided before writing: refusals come here."""
    require("gguf", "gguf", "Exporting to GGUF (`format='gguf'`)")
    from transformers import AutoConfig

    from superduper_transformers.hf import gguf_file, ollama
    from superduper_transformers.hf.data import CHATML_TEMPLATE, build_prompt

    config = AutoConfig.from_pretrained(llm.model_name_or_path if loading.is_adapter_dir(path) else path)
    issues = gguf_file.export_issues(config, tokenizer)
    if issues:
        raise ExportError(f"LLM `{llm.identifier}` cannot be exported as GGUF: " + " ".join(issues))
    chat = bool(getattr(llm.trainer, "setup_chat_format", False))
    template, stops = ollama.prompt_format(tokenizer, llm.prompt_template, chat)
    generate_kwargs = llm.generate_kwargs()
    name = ollama.ollama_name(llm.identifier)
    file = f"{name}-{quantization.upper()}.gguf"
    example = build_prompt(tokenizer, "Your question", llm.prompt_template, chat)
    header = ollama.instructions(out_dir, file, name, example, generate_kwargs.get("max_new_tokens", 64))
    try:
        modelfile = ollama.modelfile(file, template, stops, generate_kwargs, header)
    except ValueError as e:
        raise ExportError(f"LLM `{llm.identifier}`: {e} Change its `prompt_template`.") from e
    return {
        "file": file,
        "quantization": quantization,
        # what training formatted conversations with: ChatML when the tokenizer had none
        "chat_template": tokenizer.chat_template or (CHATML_TEMPLATE if chat else None),
        "modelfile": modelfile,
    }


def _write_gguf(llm, path: str, tokenizer, staging: str, plan: t.Dict[str, t.Any]) -> None:
    """The merged model as one GGUF file, and the Ollama Modelfile beside it."""
    import sys

    from superduper_transformers.hf.gguf_file import write_gguf

    write_gguf(
        _merged_model(llm, path),
        tokenizer,
        os.path.join(staging, plan["file"]),
        plan["quantization"],
        name=llm.identifier,
        chat_template=plan["chat_template"],
        progress=sys.stderr.isatty(),
    )
    with open(os.path.join(staging, MODELFILE), "w") as f:
        f.write(plan["modelfile"])


def gguf_instructions(out_dir: str) -> t.List[str]:
    """How to run a GGUF export (the comment lines at the top of its Modelfile)."""
    lines = []
    with open(os.path.join(out_dir, MODELFILE)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line[2:].rstrip("\n"))
    return lines


def export_model(
    db: Datalayer,
    identifier: str,
    out_dir: str,
    checkpoint: t.Optional[str] = None,
    merge: bool = False,
    dtype: t.Optional[str] = None,
    format: str = "hf",
    quantization: t.Optional[str] = None,
) -> str:
    """Write a trained LLM's weights and tokenizer to ``out_dir``: a standard Hugging Face
    folder, or a GGUF file with an Ollama Modelfile.

    :param db: The datalayer holding the LLM and its checkpoints.
    :param identifier: Identifier of the ``LLM``.
    :param out_dir: A new (or empty) folder to write.
    :param checkpoint: Identifier of one of the LLM's checkpoints; default the one it
        uses (``llm.adapter_id``).
    :param merge: Merge the adapter into the (unquantized) base and write the whole model;
        else write the adapter only. A full fine-tune checkpoint is always whole. A GGUF
        export is always merged.
    :param dtype: ``bf16``, ``fp16`` or ``fp32`` (default) for the written weights (format ``hf``).
    :param format: ``hf`` (a Hugging Face folder) or ``gguf`` (one GGUF file with the
        tokenizer and chat template, and a ``Modelfile`` for Ollama).
    :param quantization: ``f16`` (default), ``bf16`` or ``q8_0`` for the GGUF file.
    :returns: The absolute path of ``out_dir``.
    :raises ExportError: for an existing non-empty ``out_dir``, an unknown ``dtype``, a
        checkpoint that is not the LLM's, an LLM without a trained checkpoint, or (GGUF) an
        architecture or tokenizer that cannot be written -- always before anything is written.
    """
    _check_format(format, dtype, quantization)
    torch_dtype = _torch_dtype(dtype) if format == "hf" else None
    out_dir = _check_out_dir(out_dir)
    if identifier not in db.show("LLM"):
        raise ExportError(
            f"`identifier`={identifier!r} is not an LLM in this database (its LLMs: "
            f"{', '.join(db.show('LLM')) or 'none'}). Check the name and the database."
        )
    llm = db.load("LLM", identifier)
    # From a private verified copy: the bytes checked are the bytes exported.
    with _checkpoint_copy(db, llm, checkpoint) as (ckpt_id, path):
        return _export(llm, ckpt_id, path, out_dir, merge, torch_dtype, format, quantization)


def _export(llm, ckpt_id: str, path: str, out_dir: str, merge: bool, torch_dtype, format: str, quantization):
    identifier = llm.identifier
    tokenizer = _export_tokenizer(llm, path)
    gguf = _gguf_plan(llm, path, tokenizer, quantization or "f16", out_dir) if format == "gguf" else None

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # Beside out_dir (same filesystem): the final rename is atomic.
    staging = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging, mode=DIR_MODE)  # weights memorise rows: owner-only, as in the store
    bar = progress_bar(3, f"Exporting {identifier}", unit="stage")  # weights, tokenizer, manifest
    try:
        if gguf is not None:
            _write_gguf(llm, path, tokenizer, staging, gguf)  # the tokenizer is in the file
        elif loading.is_adapter_dir(path) and not merge:
            _write_adapter(path, staging, torch_dtype)
        else:
            _write_weights(llm, path, staging, torch_dtype)
        bar.update()
        if gguf is None:
            tokenizer.save_pretrained(staging)
        bar.update()
        manifest = file_manifest(staging)
        with open(os.path.join(staging, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=1)
        restrict_permissions(staging)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); fails rather than lose a file written since
        os.replace(staging, out_dir)
        bar.update()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    if gguf is not None:
        kind = f"GGUF {gguf['quantization']} ({gguf['file']}, {MODELFILE})"
    elif loading.is_adapter_dir(path):
        kind = "merged model" if merge else "adapter"
    else:
        kind = "full weights"
    logging.info(f"LLM {identifier}: exported {kind} of checkpoint {ckpt_id} to {out_dir}")
    return out_dir
