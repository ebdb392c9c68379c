"""One training on this process: build the objective's trl trainer from a ``TrainJob`` and run it."""

from __future__ import annotations

import dataclasses as dc
import typing as t

from superduper import logging

if t.TYPE_CHECKING:
    from datasets import Dataset
    from transformers import TrainingArguments

from superduper_transformers._private import private_dir
from superduper_transformers.hf import objectives
from superduper_transformers.hf.callbacks import build_callbacks, early_stopping_callback
from superduper_transformers.hf.data import from_ray_dataset, is_ray_dataset
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.hf.loading import is_adapter_dir, load_causal_lm, load_tokenizer
from superduper_transformers.hf.lora import continue_adapter, prepare_lora_training
from superduper_transformers.hf.packing import keep_examples_apart
from superduper_transformers.hf.quantization import (
    create_quantization_config,
    device_map_for_quantized,
)
from superduper_transformers.settings import TrainSettings, as_train_settings, precision_of


def load_model_for_training(
    model_kwargs: t.Dict,
    settings: t.Optional[TrainSettings],
    local_rank: t.Optional[int] = None,
    start_from: t.Optional[str] = None,
):
    """Load the base model, quantized when ``settings.bits`` is set, then wrap it for LoRA.

    :param start_from: A checkpoint folder to start from: full weights are loaded instead
        of the base; a LoRA adapter is loaded onto the base and goes on training (its own
        LoRA settings hold). trl then keeps a frozen copy of that adapter as the reference
        model of DPO, KTO and GRPO (adapter-sized: the base weights are shared).
    """
    kwargs = dict(model_kwargs)
    adapter = start_from if start_from and is_adapter_dir(start_from) else None
    if start_from and adapter is None:
        kwargs["pretrained_model_name_or_path"] = start_from  # full weights
    if settings is not None and settings.bits is not None:
        kwargs["quantization_config"] = create_quantization_config(settings)
        kwargs.setdefault("device_map", device_map_for_quantized(local_rank))
    model = load_causal_lm(kwargs)
    if adapter is not None:
        model = continue_adapter(model, adapter, settings)
    else:
        model = prepare_lora_training(model, settings)
    if hasattr(model, "print_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        logging.info(f"Trainable parameters: {trainable:,} of {total:,}")
    return model


def settings_callbacks(settings: t.Optional[TrainSettings]) -> t.List[t.Any]:
    """The callbacks the settings ask for, built here (this process or a Ray worker):
    the user's (from their import paths), then early stopping."""
    if settings is None:
        return []
    out = build_callbacks(settings.callbacks)
    if settings.early_stopping is not None:
        out.append(early_stopping_callback(*settings.early_stopping))
    return out


def run_job(job: TrainJob):
    """Run ``job`` on this process (one device, or one Ray worker).

    :return: the ``TrainOutput`` of ``trainer.train()``.
    """
    from transformers import set_seed

    # LoRA weights are initialised from the global RNG before the HF trainer seeds it:
    # seed first, so the same settings give the same run in any process.
    set_seed(job.training_args.seed)
    tokenizer = load_tokenizer(job.tokenizer_kwargs)
    settings = job.settings
    if settings is not None and job.training_args is not None:
        # The trainer's arguments are the resolved truth for precision.
        settings = dc.replace(settings, precision=precision_of(job.training_args))
    model = load_model_for_training(job.model_kwargs, settings, job.local_rank, job.start_from)
    # Without settings the arguments are the caller's own: their layout is kept.
    explicit = settings is None or settings.batching.explicit
    train_dataset = job.train_dataset
    training_args = keep_examples_apart(model, job.training_args, explicit, train_dataset)
    if is_ray_dataset(train_dataset):
        # Tokenized rows streaming from Ray Data (here: one process reads it all).
        train_dataset = from_ray_dataset(train_dataset)
    eval_datasets = job.eval_datasets
    if isinstance(eval_datasets, dict) and not eval_datasets:
        eval_datasets = None
    objective = objectives.get(job.objective)
    trainer = objective.build_trainer(
        model,
        training_args,
        train_dataset,
        eval_datasets,
        tokenizer,
        # The settings' first: early stopping decides in `on_evaluate` before the job's
        # callbacks (the save of the last step, the db records) see that event.
        [*settings_callbacks(settings), *job.callbacks],
        **objective.trainer_inputs(settings),
        **job.trainer_kwargs,
    )
    if job.trainer_prepare_func is not None:
        trainer = job.trainer_prepare_func(trainer)
    # Checkpoints hold weights, which memorise rows: owner-only, as in the artifact store.
    private_dir(training_args.output_dir)
    return trainer.train(resume_from_checkpoint=job.resume_from_checkpoint)


def train_func(
    training_args: TrainingArguments,
    train_dataset: Dataset,
    eval_datasets: t.Union[Dataset, t.Dict[str, Dataset], None],
    model_kwargs: t.Dict[str, t.Any],
    tokenizer_kwargs: t.Dict[str, t.Any],
    trainer_prepare_func: t.Optional[t.Callable] = None,
    callbacks: t.Optional[t.Sequence] = None,
    *,
    config: t.Any = None,
    resume_from_checkpoint: t.Optional[str] = None,
    **kwargs,
):
    """Run one training on this process (one device, or one Ray worker).

    :param training_args: trl ``SFTConfig`` (or ``TrainingArguments``).
    :param train_dataset: Tokenized ``datasets.Dataset`` (``input_ids``, ``labels``),
        or a tokenized ``ray.data.Dataset`` with those columns: it is read as a stream
        (an iterable, so ``training_args.max_steps`` must be set). On Ray
        (``training.train(..., ray_configs=...)``) each worker reads its own shard.
    :param eval_datasets: One tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model
        (``pretrained_model_name_or_path`` and options).
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param trainer_prepare_func: Applied to the built trainer before training
        (e.g. ``ray.train.huggingface.transformers.prepare_trainer``).
    :param callbacks: Extra ``TrainerCallback`` instances (e.g. ``LLMCallback``).
    :param config: LoRA/quantization settings: an ``LLMTrainer`` or ``TrainSettings``
        (without it all weights are trained unquantized).
    :param resume_from_checkpoint: A checkpoint folder to resume from.
    :param kwargs: Other keywords for the trainer: all are passed to trl's
        ``SFTTrainer`` (``compute_metrics``, ``data_collator``, ``optimizers``,
        ``preprocess_logits_for_metrics``, ...).
    :return: the ``TrainOutput`` of ``trainer.train()``.
    """
    return run_job(
        TrainJob(
            training_args=training_args,
            train_dataset=train_dataset,
            eval_datasets=eval_datasets,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
            settings=as_train_settings(config),
            resume_from_checkpoint=resume_from_checkpoint,
            callbacks=list(callbacks or []),
            trainer_kwargs=kwargs,
            trainer_prepare_func=trainer_prepare_func,
        )
    )
