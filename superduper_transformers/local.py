"""``train_func``: build the SFT trainer from its parts and run one training."""

from __future__ import annotations

import typing as t

from superduper import logging

from superduper_transformers.lora import prepare_lora_training
from superduper_transformers.settings import precision_of
from superduper_transformers.loading import load_causal_lm, load_tokenizer
from superduper_transformers.quantization import (
    create_quantization_config,
    device_map_for_quantized,
)

if t.TYPE_CHECKING:
    from superduper_transformers.trainer import LLMTrainer


def load_model_for_training(
    model_kwargs: t.Dict, config: t.Optional["LLMTrainer"], local_rank=None, precision=None
):
    """Load the base model, quantized when ``config.bits`` is set, then wrap it for LoRA.

    ``precision`` (resolved from the training arguments) sets the QLoRA compute dtype.
    """
    kwargs = dict(model_kwargs)
    if config is not None and config.bits is not None:
        kwargs["quantization_config"] = create_quantization_config(config, precision)
        kwargs.setdefault("device_map", device_map_for_quantized(local_rank))
    model = load_causal_lm(kwargs)
    if config is not None:
        model = prepare_lora_training(model, config)
    if hasattr(model, "print_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        logging.info(f"Trainable parameters: {trainable:,} of {total:,}")
    return model


def train_func(
    training_args,
    train_dataset,
    eval_datasets,
    model_kwargs: t.Dict[str, t.Any],
    tokenizer_kwargs: t.Dict[str, t.Any],
    trainer_prepare_func: t.Optional[t.Callable] = None,
    callbacks: t.Optional[t.Sequence] = None,
    **kwargs,
):
    """Run one training on this process (one device, or one Ray worker).

    :param training_args: trl ``SFTConfig`` (or ``TrainingArguments``).
    :param train_dataset: Tokenized ``datasets.Dataset`` (``input_ids``, ``labels``).
    :param eval_datasets: One tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model
        (``pretrained_model_name_or_path`` and options).
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param trainer_prepare_func: Applied to the built trainer before training
        (e.g. ``ray.train.huggingface.transformers.prepare_trainer``).
    :param callbacks: Extra ``TrainerCallback`` instances (e.g. ``LLMCallback``).
    :param kwargs: ``config``: the ``LLMTrainer`` (LoRA and quantization settings;
        without it all weights are trained unquantized); ``resume_from_checkpoint``:
        a checkpoint folder to resume from; ``local_rank``: device of a quantized model.
    :return: the ``TrainOutput`` of ``trainer.train()``.
    """
    from trl import SFTTrainer

    from transformers import set_seed

    config = kwargs.get("config")
    # LoRA weights are initialised from the global RNG before the HF trainer seeds it:
    # seed first, so the same settings give the same run in any process.
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(tokenizer_kwargs)
    model = load_model_for_training(
        model_kwargs, config, kwargs.get("local_rank"), precision_of(training_args)
    )
    if isinstance(eval_datasets, dict) and not eval_datasets:
        eval_datasets = None
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets,
        processing_class=tokenizer,
        callbacks=list(callbacks or []),
    )
    if trainer_prepare_func is not None:
        trainer = trainer_prepare_func(trainer)
    return trainer.train(resume_from_checkpoint=kwargs.get("resume_from_checkpoint"))
