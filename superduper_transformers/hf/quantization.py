"""Quantization settings for QLoRA: ``bits`` -> ``BitsAndBytesConfig``."""

from __future__ import annotations

import contextlib
import typing as t

from superduper_transformers._optional import require
from superduper_transformers.settings import Precision, TrainSettings, as_train_settings


def create_quantization_config(
    config: t.Union[TrainSettings, t.Any], precision: t.Optional[Precision] = None
):
    """Create the bitsandbytes quantization config for ``config.bits``.

    4 bits: NF4 with double quantization and the training precision as compute dtype
    (bf16/fp16/fp32). 8 bits: LLM.int8. ``bits=None``: no quantization.

    :param config: The resolved ``TrainSettings``, or the ``LLMTrainer`` (resolved here
        from its settings and the hardware, as the trainer resolves them).
    :param precision: Overrides the precision of ``config`` (e.g. the one prediction uses).
    :return: a ``transformers.BitsAndBytesConfig`` or None.
    """
    settings = as_train_settings(config)
    if settings is None or settings.bits is None:
        return None
    require("bitsandbytes", "quant", f"`bits={settings.bits}` (QLoRA)")
    from transformers import BitsAndBytesConfig

    if settings.bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=(precision or settings.precision).torch_dtype,
        )
    if settings.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"`bits` must be None, 4 or 8, got {settings.bits!r}.")


def device_map_for_quantized(local_rank: t.Optional[int] = None):
    """Where a quantized model is loaded: the process's GPU, else the CPU.

    bitsandbytes places weights at load time, so each (Ray) worker must load its
    copy onto its own device instead of letting ``device_map='auto'`` spread it.
    """
    import torch

    if torch.cuda.is_available():
        return {"": local_rank if local_rank is not None else torch.cuda.current_device()}
    return {"": "cpu"}


def is_quantized(model) -> bool:
    """Whether ``model`` was loaded in 4 or 8 bits (bitsandbytes).

    :param model: A ``PreTrainedModel`` or a peft model around one.
    """
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


@contextlib.contextmanager
def trainable_dtypes_kept(model):
    """Give a quantized ``model``'s trainable weights back their dtype on leaving.

    trl's trainers cast them to bf16 when built on a quantized model, whatever the
    training precision (fp32 on a CPU without native bf16), and a module trained in full
    (``lora_modules_to_save``) then no longer matches the activations outside autocast.

    :param model: The model handed to the trainer (a peft model for QLoRA).
    """
    dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    yield
    if is_quantized(model):
        for name, param in model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
