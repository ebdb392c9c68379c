"""The documented public module: training entry points and components.

``train`` is the entry point used by ``LLMTrainer.fit``; ``train_func`` runs one
training on one process; the rest are the building blocks they compose.
"""

from __future__ import annotations

import typing as t

from superduper_transformers.callback import LLMCallback
from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.data import tokenize
from superduper_transformers.local import train_func
from superduper_transformers.lora import prepare_lora_training
from superduper_transformers.model import LLM
from superduper_transformers.quantization import create_quantization_config
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


def check_devices(config) -> None:
    """Refuse to pick a multi-GPU mode silently.

    Several visible GPUs and neither ``ray_configs`` nor ``num_gpus``: the user must
    choose (one GPU locally, or Ray across them); we never switch modes for them.
    """
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible > 1 and config is not None and config.ray_configs is None and config.num_gpus is None:
        raise ValueError(
            f"{visible} GPUs are visible and the LLMTrainer sets neither `num_gpus` nor "
            "`ray_configs`. Choose explicitly: `num_gpus=1` trains on one GPU here; "
            "`ray_configs={'scaling_config': ScalingConfig(num_workers=N, use_gpu=True)}` "
            "trains on N GPUs with Ray (or set CUDA_VISIBLE_DEVICES)."
        )


def train(
    training_args,
    train_dataset,
    eval_datasets,
    model_kwargs: t.Dict[str, t.Any],
    tokenizer_kwargs: t.Dict[str, t.Any],
    db: t.Optional["Datalayer"] = None,
    llm: t.Optional[LLM] = None,
    ray_configs: t.Optional[t.Dict[str, t.Any]] = None,
    **kwargs,
):
    """Train an LLM locally, or on Ray Train when ``ray_configs`` is given.

    With ``db`` and ``llm`` (and ``log_to_db`` on, the default), an ``LLMCallback``
    records every checkpoint and eval metric of the run in the datalayer.

    :param training_args: trl ``SFTConfig``.
    :param train_dataset: Tokenized training dataset.
    :param eval_datasets: A tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model.
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param db: The datalayer to record the run in.
    :param llm: The ``LLM`` being trained.
    :param ray_configs: ``scaling_config`` (required), ``run_config``, ``address``.
    :param kwargs: ``config`` (the ``LLMTrainer``), ``experiment_id``, and keywords
        passed on to :func:`train_func`.
    """
    config = kwargs.get("config")
    check_devices(config)
    if ray_configs is not None:
        from superduper_transformers.ray import ray_train

        return ray_train(
            training_args,
            train_dataset,
            eval_datasets,
            model_kwargs,
            tokenizer_kwargs,
            db=db,
            llm=llm,
            ray_configs=ray_configs,
            **kwargs,
        )
    experiment_id = kwargs.pop("experiment_id", None)
    callbacks = list(kwargs.pop("callbacks", None) or [])
    log_to_db = config.log_to_db if config is not None else True
    if db is not None and llm is not None and log_to_db:
        callbacks.append(LLMCallback(db=db, llm=llm, experiment_id=experiment_id))
    return train_func(
        training_args,
        train_dataset,
        eval_datasets,
        model_kwargs,
        tokenizer_kwargs,
        callbacks=callbacks,
        **kwargs,
    )


def handle_ray_results(db: t.Optional["Datalayer"], llm: t.Optional[LLM], results):
    """Register the final checkpoint of a Ray run in the db (when ``log_to_db`` was off).

    :param db: The datalayer (None: return the results untouched).
    :param llm: The trained ``LLM`` (None: return the results untouched).
    :param results: The ``ray.train.Result`` of ``TorchTrainer.fit()``.
    """
    from superduper_transformers.ray import handle_ray_results as _handle

    return _handle(db, llm, results)
