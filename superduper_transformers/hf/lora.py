"""LoRA preparation: k-bit preparation and peft wrapping (a new adapter, or one loaded to go on training)."""

from __future__ import annotations

import typing as t

from superduper_transformers.settings import LoraSettings, TrainSettings, as_train_settings


def lora_config(lora: LoraSettings):
    """The peft ``LoraConfig`` for these LoRA settings."""
    from peft import LoraConfig

    targets = lora.target_modules
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
        bias=lora.bias,
        modules_to_save=list(lora.modules_to_save) if lora.modules_to_save else None,
        task_type="CAUSAL_LM",
    )


def prepare_lora_training(model, config: t.Union[TrainSettings, t.Any]):
    """Wrap ``model`` for LoRA training.

    With ``bits`` set, the quantized model is first prepared for k-bit training
    (norms in fp32, input gradients on, optional gradient checkpointing). Without
    quantization but with gradient checkpointing, input embeddings must require
    gradients or the frozen base cuts the graph before the adapters.

    :param model: A ``PreTrainedModel`` (possibly quantized).
    :param config: The resolved ``TrainSettings``, or the ``LLMTrainer`` (resolved here).
    :return: the peft model (``model`` unchanged for full fine-tuning).
    """
    settings = as_train_settings(config)
    if settings is None or settings.lora is None:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if settings.bits is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=settings.gradient_checkpointing
        )
    elif settings.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(settings.lora))


def continue_adapter(model, path: str, config: t.Union[TrainSettings, t.Any]):
    """Load the LoRA adapter at ``path`` onto ``model``, trainable: training goes on from it.

    The adapter's own LoRA settings hold (a rank cannot change mid-way). With ``bits`` set
    the quantized base is prepared for k-bit training first, as for a new adapter.

    :param model: The base ``PreTrainedModel`` (possibly quantized).
    :param path: The adapter's folder (a checkpoint of an earlier training).
    :param config: The resolved ``TrainSettings``, or the ``LLMTrainer``.
    """
    from peft import PeftModel, prepare_model_for_kbit_training

    settings = as_train_settings(config)
    checkpointing = bool(settings is not None and settings.gradient_checkpointing)
    if settings is not None and settings.bits is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.enable_input_require_grads()
    return PeftModel.from_pretrained(model, path, is_trainable=True)


def unmatched_modules(
    model_kwargs: t.Dict[str, t.Any], names: t.Sequence[str]
) -> t.Tuple[t.List[str], t.List[str]]:
    """The ``names`` (LoRA target or saved modules) that match no module of the model, and
    the model's module names that could be meant (the last part of each name, sorted).

    The model is built from its config on the meta device: no weights are read or held.
    A name matches as in peft: the module's full name, or its last dotted parts.

    :param model_kwargs: ``from_pretrained`` keywords of the base model.
    :param names: Module names to check (e.g. ``["q_proj", "v_proj"]``).
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(model_kwargs)
    path = kwargs.pop("pretrained_model_name_or_path")
    config_kwargs = {k: kwargs[k] for k in ("trust_remote_code", "revision") if k in kwargs}
    config = AutoConfig.from_pretrained(path, **config_kwargs)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, **config_kwargs)
    modules = [n for n, _ in model.named_modules() if n]
    missing = [k for k in names if not any(n == k or n.endswith(f".{k}") for n in modules)]
    return missing, sorted({n.rsplit(".", 1)[-1] for n in modules if not n.rsplit(".", 1)[-1].isdigit()})
