"""The documented public module: training entry points and components.

A facade only: it re-exports the building blocks and composes ``train`` from them.
Nothing in the package imports this module (an import contract checks it), so it can
never become a knot of the dependency graph again.
"""

from __future__ import annotations

import typing as t

from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.hf.data import tokenize
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.hf.lora import prepare_lora_training
from superduper_transformers.hf.quantization import create_quantization_config
from superduper_transformers.hf.train import train_func
from superduper_transformers.launch.callback import LLMCallback
from superduper_transformers.launch.dispatch import check_devices, launch
from superduper_transformers.launch.ray_train import handle_ray_results
from superduper_transformers.model import LLM
from superduper_transformers.settings import as_train_settings
from superduper_transformers.trainer import LLMTrainer

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

__all__ = [
    "Checkpoint",
    "LLM",
    "LLMCallback",
    "LLMTrainer",
    "create_quantization_config",
    "handle_ray_results",
    "prepare_lora_training",
    "tokenize",
    "train",
    "train_func",
]


def train(
    training_args,
    train_dataset,
    eval_datasets,
    model_kwargs: t.Dict[str, t.Any],
    tokenizer_kwargs: t.Dict[str, t.Any],
    db: t.Optional[Datalayer] = None,
    llm: t.Optional[LLM] = None,
    ray_configs: t.Optional[t.Dict[str, t.Any]] = None,
    *,
    config: t.Any = None,
    experiment_id: t.Optional[str] = None,
    resume_from_checkpoint: t.Optional[str] = None,
    callbacks: t.Optional[t.Sequence] = None,
    **kwargs,
):
    """Train an LLM locally, or on Ray Train when ``ray_configs`` is given.

    With ``db`` and ``llm`` (and ``log_to_db`` on, the default), an ``LLMCallback``
    records every checkpoint and eval metric of the run in the datalayer.

    :param training_args: trl ``SFTConfig``.
    :param train_dataset: Tokenized training dataset: a ``datasets.Dataset``, or a
        ``ray.data.Dataset`` with ``input_ids``/``attention_mask``/``labels`` (streamed;
        set ``max_steps``). With ``ray_configs`` a ``ray.data.Dataset`` is split across
        the workers (``get_dataset_shard``) instead of being pickled into each; build
        it after ``ray.init`` (the training then uses that Ray as it is).
    :param eval_datasets: A tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model.
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param db: The datalayer to record the run in.
    :param llm: The ``LLM`` being trained.
    :param ray_configs: ``scaling_config`` (required), ``run_config``, ``address``.
    :param config: LoRA/quantization settings: the ``LLMTrainer`` (or ``TrainSettings``).
    :param experiment_id: The run's identifier (its checkpoints carry it).
    :param resume_from_checkpoint: A local checkpoint folder to resume from.
    :param callbacks: Extra ``TrainerCallback`` instances.
    :param kwargs: Other keywords for the trainer: all are passed to trl's ``SFTTrainer``
        (``compute_metrics``, ``data_collator``, ``optimizers``, ...).
    """
    check_devices(ray_configs, getattr(config, "num_gpus", None))
    job = TrainJob(
        training_args,
        train_dataset,
        eval_datasets,
        model_kwargs,
        tokenizer_kwargs,
        settings=as_train_settings(config),
        experiment_id=experiment_id,
        resume_from_checkpoint=resume_from_checkpoint,
        callbacks=list(callbacks or []),
        trainer_kwargs=kwargs,
    )
    return launch(job, db=db, llm=llm, ray_configs=ray_configs)
