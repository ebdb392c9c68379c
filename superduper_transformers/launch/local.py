"""Run a training on this process, recording it in the db through ``LLMCallback``."""

from __future__ import annotations

import contextlib
import dataclasses as dc
import os
import typing as t

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from superduper_transformers import resume
from superduper_transformers.hf import train as hf_train
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.launch.callback import (
    SaveTheLastStep,
    recording_callbacks,
    register_final_checkpoint,
)


def run_local(job: TrainJob, db: t.Any = None, llm: t.Any = None):
    """Train ``job`` here; with ``db`` and ``llm`` (and ``log_to_db``), record it.

    :param job: The training.
    :param db: The datalayer to record the run in.
    :param llm: The ``LLM`` being trained (a component in ``db``).
    :return: the ``TrainOutput``.
    """
    log_to_db = job.settings.log_to_db if job.settings is not None else True
    recording = db is not None and llm is not None
    callbacks = []
    if recording:
        callbacks = [
            SaveTheLastStep(),
            *recording_callbacks(job, llm.identifier, db=db, llm=llm, log_to_db=log_to_db),
        ]
    job = dc.replace(job, callbacks=[*job.callbacks, *callbacks])
    # While it trains, saves of the model are bookkeeping, not re-applies to plan.
    with resume.training(llm) if llm is not None else contextlib.nullcontext():
        output = hf_train.run_job(job)
        if recording and not log_to_db:
            # Recorded at the end only, as a Ray run with log_to_db=False is: the checkpoint
            # of the last step (SaveTheLastStep saved it), not whichever folder is newest.
            last = os.path.join(job.training_args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{output.global_step}")
            register_final_checkpoint(
                db,
                llm,
                last,
                job.experiment_id or "local",
                data_fingerprint=job.data_fingerprint,
                load_best=bool(job.training_args.load_best_model_at_end),
            )
    return output
