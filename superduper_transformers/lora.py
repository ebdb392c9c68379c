"""LoRA preparation: k-bit preparation and peft wrapping. No I/O."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from superduper_transformers.trainer import LLMTrainer


def lora_config(config: "LLMTrainer"):
    """The peft ``LoraConfig`` for the trainer's ``lora_*`` settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias=config.lora_bias,
        modules_to_save=config.lora_modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def prepare_lora_training(model, config: "LLMTrainer"):
    """Wrap ``model`` for LoRA training.

    With ``bits`` set, the quantized model is first prepared for k-bit training
    (norms in fp32, input gradients on, optional gradient checkpointing). Without
    quantization but with gradient checkpointing, input embeddings must require
    gradients or the frozen base cuts the graph before the adapters.

    :param model: A ``PreTrainedModel`` (possibly quantized).
    :param config: The ``LLMTrainer`` with the LoRA settings.
    :return: the peft model (``model`` unchanged when ``use_lora`` is False).
    """
    if not config.use_lora:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    gradient_checkpointing = bool((config.training_kwargs or {}).get("gradient_checkpointing"))
    if config.bits is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(config))
