"""Load base models, tokenizers and stored checkpoints, offline-friendly.

A path that does not exist fails here with one clear message instead of a hub
stack trace: this plugin runs offline (``HF_HUB_OFFLINE=1``) in tests and CI.
"""

from __future__ import annotations

import os
import re
import typing as t


class ModelPathError(ValueError):
    """``model_name_or_path`` points at nothing that can be loaded."""


_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")


def _is_hub_id(name: str) -> bool:
    """``org/name`` or ``name``: something only the Hugging Face hub (or its cache) can resolve."""
    return bool(_HUB_ID.match(name))


def check_model_path(name: t.Optional[str], field: str = "model_name_or_path") -> None:
    """Fail early, with the fix, when ``name`` is neither a model folder nor a cached hub id.

    :param name: A local folder with ``config.json`` or a Hugging Face hub id.
    :param field: The field name to report.
    """
    if not name:
        raise ModelPathError(
            f"`{field}` is required: give the folder of a Hugging Face causal LM "
            "(with config.json) or a hub id available offline."
        )
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelPathError(
                f"`{field}`={name!r} is a folder without config.json: point it at a folder "
                "written by `save_pretrained`."
            )
        return
    if not _is_hub_id(name):
        raise ModelPathError(
            f"`{field}`={name!r} does not exist. Give the folder of a Hugging Face causal "
            "LM (with config.json)."
        )
    from huggingface_hub import constants
    from transformers.utils import cached_file

    try:
        cached_file(name, "config.json", local_files_only=True)
        return
    except Exception:
        pass
    if constants.HF_HUB_OFFLINE:
        raise ModelPathError(
            f"`{field}`={name!r} is not a local folder and not in the local Hugging Face "
            "cache, and downloads are off (HF_HUB_OFFLINE=1). Give the path of a folder "
            "written by `save_pretrained`, or download the model first."
        )


def load_tokenizer(tokenizer_kwargs: t.Dict[str, t.Any]):
    """Load a tokenizer; give it a pad token (EOS) when it has none, as causal LMs need."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(**tokenizer_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_kwargs: t.Dict[str, t.Any]):
    """Load ``AutoModelForCausalLM`` from ``model_kwargs`` (``pretrained_model_name_or_path`` + options)."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(model_kwargs)
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        import torch

        kwargs["dtype"] = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(**kwargs)


def is_adapter_dir(path: str) -> bool:
    """Whether a checkpoint folder holds a peft adapter (else full weights)."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def has_tokenizer(path: str) -> bool:
    """Whether a checkpoint folder holds tokenizer files."""
    return os.path.isfile(os.path.join(path, "tokenizer_config.json"))


def default_device() -> str:
    """Where an unquantized model predicts: the current GPU when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
