"""Quantization settings for QLoRA: ``bits`` -> ``BitsAndBytesConfig``."""

from __future__ import annotations

import typing as t

from superduper_transformers._optional import require

if t.TYPE_CHECKING:
    from superduper_transformers.trainer import LLMTrainer


def compute_dtype(config: "LLMTrainer"):
    """The 4-bit compute dtype: the training precision resolved for ``config`` (bf16/fp16/fp32)."""
    from superduper_transformers.config import precision_for

    return precision_for(config).torch_dtype


def create_quantization_config(config: "LLMTrainer", precision=None):
    """Create the bitsandbytes quantization config for ``config.bits``.

    4 bits: NF4 with double quantization and the compute dtype of the training
    precision (bf16/fp16/fp32). 8 bits: LLM.int8. ``bits=None``: no quantization.

    :param config: The ``LLMTrainer`` whose ``bits`` and precision settings are used.
    :param precision: The resolved training precision (a ``settings.Precision``); by
        default resolved from ``config`` and the hardware, as the trainer does.
    :return: a ``transformers.BitsAndBytesConfig`` or None.
    """
    if config.bits is None:
        return None
    require("bitsandbytes", "quant", f"`bits={config.bits}` (QLoRA)")
    from transformers import BitsAndBytesConfig

    if config.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=(precision.torch_dtype if precision else compute_dtype(config)),
        )
    if config.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"`bits` must be None, 4 or 8, got {config.bits!r}.")


def device_map_for_quantized(local_rank: int | None = None):
    """Where a quantized model is loaded: the process's GPU, else the CPU.

    bitsandbytes places weights at load time, so each (Ray) worker must load its
    copy onto its own device instead of letting ``device_map='auto'`` spread it.
    """
    import torch

    if torch.cuda.is_available():
        return {"": local_rank if local_rank is not None else torch.cuda.current_device()}
    return {"": "cpu"}
