"""``TrainJob``: everything one training needs, handed explicitly from layer to layer."""

from __future__ import annotations

import dataclasses as dc
import typing as t

from superduper_transformers.settings import TrainSettings


@dc.dataclass
class TrainJob:
    """One training, as the launchers run it (locally, or pickled to each Ray worker).

    :param training_args: trl ``SFTConfig`` (or ``TrainingArguments``), resolved.
    :param train_dataset: Tokenized ``datasets.Dataset`` (``input_ids``, ``labels``), a
        tokenized ``ray.data.Dataset``, or (from ``LLMTrainer.fit`` with ``ray_configs``)
        a ``launch.ray_data.RowSource`` that Ray Data reads from the db. On Ray the
        last two reach the workers as shards, not inside the pickled job.
    :param eval_datasets: One tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model.
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param settings: LoRA, quantization and precision (None: all weights, unquantized).
    :param experiment_id: The run's identifier (its checkpoints carry it).
    :param resume_from_checkpoint: A local checkpoint folder to resume from.
    :param data_fingerprint: The fingerprint of the training data, recorded on each
        checkpoint the run registers (lineage).
    :param callbacks: ``TrainerCallback`` instances added to the trainer.
    :param trainer_kwargs: More keywords for trl's ``SFTTrainer`` (``compute_metrics``,
        ``data_collator``, ``optimizers``, ``preprocess_logits_for_metrics``, ...).
    :param trainer_prepare_func: Applied to the built trainer before training.
    :param local_rank: This process's device index (a Ray worker's), for quantized loading.
    :param objective: The training objective (``hf.objectives``): which trl trainer runs.
    :param start_from: The checkpoint folder training starts from (a LoRA adapter goes on
        training; full weights replace the base), None for the base model.
    :param generation_samples: Prompts (``{"set", "input", "prompt", "target",
        "special_tokens"}``) generated for at each evaluation and recorded on the model.
    """

    training_args: t.Any
    train_dataset: t.Any
    eval_datasets: t.Any
    model_kwargs: t.Dict[str, t.Any]
    tokenizer_kwargs: t.Dict[str, t.Any]
    settings: t.Optional[TrainSettings] = None
    experiment_id: t.Optional[str] = None
    resume_from_checkpoint: t.Optional[str] = None
    data_fingerprint: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    callbacks: t.List[t.Any] = dc.field(default_factory=list)
    trainer_kwargs: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    trainer_prepare_func: t.Optional[t.Callable] = None
    local_rank: t.Optional[int] = None
    generation_samples: t.List[t.Dict[str, t.Any]] = dc.field(default_factory=list)
    objective: str = "sft"
    start_from: t.Optional[str] = None

    def __repr__(self) -> str:
        # Short on purpose: Ray records its train_loop_config (this job) with `str`, and
        # the full dataclass repr would carry every training argument and dataset.
        rows = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else "?"
        return (
            f"TrainJob(run={self.experiment_id}, rows={rows}, "
            f"output_dir={getattr(self.training_args, 'output_dir', None)!r})"
        )
