"""Choose the launcher of a training: this process, or Ray Train. Never silently."""

from __future__ import annotations

import typing as t

from superduper_transformers.hf.job import TrainJob


def check_devices(ray_configs: t.Any, num_gpus: t.Optional[int]) -> None:
    """Refuse to pick a multi-GPU mode silently.

    Several visible GPUs and neither ``ray_configs`` nor ``num_gpus``: the user must
    choose (one GPU locally, or Ray across them); we never switch modes for them.
    """
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible > 1 and ray_configs is None and num_gpus is None:
        raise ValueError(
            f"{visible} GPUs are visible and the LLMTrainer sets neither `num_gpus` nor "
            "`ray_configs`. Choose explicitly: `num_gpus=1` trains on one GPU here; "
            "`ray_configs={'scaling_config': ScalingConfig(num_workers=N, use_gpu=True)}` "
            "trains on N GPUs with Ray (or set CUDA_VISIBLE_DEVICES)."
        )


def launch(job: TrainJob, db: t.Any = None, llm: t.Any = None, ray_configs: t.Any = None):
    """Run ``job`` locally, or on Ray Train when ``ray_configs`` is given.

    :param job: The training.
    :param db: The datalayer to record the run in.
    :param llm: The ``LLM`` being trained.
    :param ray_configs: ``scaling_config`` (required), ``run_config``, ``address``, ...
    :return: the ``TrainOutput`` (local) or the ``ray.train.Result`` (Ray).
    """
    if ray_configs is not None:
        from superduper_transformers.launch.ray_train import ray_train

        return ray_train(job, db=db, llm=llm, ray_configs=ray_configs)
    from superduper_transformers.launch.local import run_local

    return run_local(job, db=db, llm=llm)
