"""``LLMCallback``: write checkpoints and metrics of an HF training run into the datalayer.

Each event does one job, on the main process (rank 0) only:
``on_save`` registers the checkpoint just written, appends the log entries since the
previous save to the run's history and prunes the run's old checkpoints,
``on_evaluate`` records eval metrics on the model, ``on_train_end`` points the
model at its last checkpoint, or at its best with ``load_best_model_at_end=True``
(transformers' meaning of that setting; the best is kept and marked either way).
"""

from __future__ import annotations

import json
import os
import typing as t
import uuid

from superduper import logging
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from superduper_transformers import checkpoint as ckpts
from superduper_transformers import history, promote, resume
from superduper_transformers.settings import best_metric

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer


def best_metric_name(args) -> t.Tuple[t.Optional[str], bool]:
    """``metric_for_best_model`` of the built trl config as logged, and its direction
    (:func:`..settings.best_metric`); without a setting the eval loss decides."""
    return best_metric(args.metric_for_best_model or "loss", args.greater_is_better)


def latest_metrics(log_history: t.Sequence[t.Dict], step: int) -> t.Dict[str, float]:
    """The latest value of every numeric metric logged at or before ``step``."""
    out: t.Dict[str, float] = {}
    for entry in log_history:
        if entry.get("step", 0) > step:
            continue
        for k, v in entry.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    return out


class LLMCallback(TrainerCallback):
    """Record a training run of an ``LLM`` in the datalayer.

    Give either ``db`` and ``llm`` (local training), or ``cfg`` and ``identifier``
    (a Ray worker: the datalayer is rebuilt from the serialized config on rank 0,
    never pickled).

    :param cfg: Serialized datalayer config (``db.cfg.dict()``) or a ``Config``.
    :param identifier: Identifier of the ``LLM`` being trained.
    :param db: The datalayer.
    :param llm: The ``LLM`` being trained.
    :param experiment_id: Identifier of this training run (default: a new random id; pass
        the run's id to keep checkpoints of a resumed or restarted run in one sequence).
    :param data_fingerprint: The fingerprint of the run's training data, recorded on each
        checkpoint (``TrainJob.data_fingerprint``).
    :param generation_samples: Prompts to generate for at each evaluation, recorded on the
        model (``TrainJob.generation_samples``).
    """

    def __init__(
        self,
        cfg: t.Optional[t.Any] = None,
        identifier: t.Optional[str] = None,
        db: t.Optional[Datalayer] = None,
        llm: t.Optional[t.Any] = None,
        experiment_id: t.Optional[str] = None,
        data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
        generation_samples: t.Sequence[t.Dict[str, t.Any]] = (),
    ):
        if not ((db is not None and llm is not None) or (cfg is not None and identifier)):
            raise ValueError(
                "LLMCallback needs either `db` and `llm` (local training) or `cfg` and "
                f"`identifier` (Ray workers); got db={'set' if db is not None else None}, "
                f"llm={'set' if llm is not None else None}, "
                f"cfg={'set' if cfg is not None else None}, identifier={identifier!r}."
            )
        self.cfg = cfg
        self.identifier = identifier or llm.identifier
        self.db = db
        self.llm = llm
        self.experiment_id = experiment_id or uuid.uuid4().hex[:8]
        self.data_fingerprint = dict(data_fingerprint or {})
        self.generation_samples = list(generation_samples)
        self._generated_at: t.Optional[int] = None
        self._history_step = 0  # the step up to which the run's history is stored
        self._pointer_recorded = False  # the run's first move of the pointer is in the promotion history

    # -- connection -------------------------------------------------------
    def _connect(self) -> None:
        """Rebuild the datalayer and load the model (Ray workers, rank 0 only)."""
        if self.db is not None and self.llm is not None:
            return
        from superduper_transformers.store.datalayer import datalayer_from_config

        self.db = datalayer_from_config(self.cfg)
        self.llm = resume.mark_training(self.db.load("LLM", self.identifier))

    def datalayer(self) -> Datalayer:
        """The datalayer this callback records in (rebuilt from ``cfg`` on first use)."""
        self._connect()
        return self.db

    @property
    def run_id(self) -> str:
        """The run these checkpoints belong to."""
        return self.experiment_id

    # -- events -----------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        """Start the stored history at the step training starts from (a resume's checkpoint),
        first writing what the run's history lacks up to there (a crash between registering
        that checkpoint and writing its history)."""
        self._history_step = state.global_step
        if state.global_step and state.is_world_process_zero:
            self._connect()
            history.fill_gap(self.db, self.identifier, self.run_id, state.log_history, state.global_step)

    def on_save(self, args, state, control, **kwargs):
        """Register the checkpoint just written, point the model at it, prune old ones."""
        if not state.is_world_process_zero:
            return
        self._connect()
        path = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        ckpt = ckpts.register_checkpoint(
            self.db,
            model=self.identifier,
            experiment_id=self.run_id,
            path=path,
            step=state.global_step,
            metrics=latest_metrics(state.log_history, state.global_step),
            data_fingerprint=self.data_fingerprint,
        )
        # Point the *stored* model row at the new checkpoint before pruning anything:
        # pruning may delete the checkpoint the stored row pointed at until now (the
        # previous save, when an older one is the best), and a row that references a
        # deleted checkpoint can neither be loaded nor saved again.
        before = getattr(self.llm.adapter_id, "identifier", None)
        promote.point_at(self.db, self.llm, ckpt)
        if not self._pointer_recorded:  # the run's later moves are its own checkpoint rows
            self._pointer_recorded = True
            promote.record_move(
                self.db, self.identifier, before, ckpt.identifier, promote.TRAIN, run=self.run_id
            )
        # What was logged since the previous save (or since the checkpoint resumed from).
        history.record_history(
            self.db, self.identifier, self.run_id, state.log_history, self._history_step, state.global_step
        )
        self._history_step = state.global_step
        self._prune(args)

    def _prune(self, args) -> None:
        # Every checkpoint is kept without a limit: reading the run's rows (one more at
        # each save) would make each save cost more than the one before.
        if args.save_total_limit is None:
            return
        metric, greater = best_metric_name(args)
        # Under the model's lock (promote.prune): a promotion in another process waits,
        # so no alias is written to a checkpoint deleted here.
        promote.prune(
            self.db,
            self.identifier,
            self.run_id,
            args.save_total_limit,
            metric,
            greater,
            in_use=getattr(self.llm.adapter_id, "identifier", None),
        )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Record the eval metrics (one list per metric and eval set) on the model in the db.

        Rebuilt from the trainer's whole log history, not appended: after a resume that
        history is restored from the checkpoint, so the lists stay continuous (no restart,
        no evaluation counted twice).
        """
        if not state.is_world_process_zero or not metrics:
            return
        self._connect()
        if self.llm.trainer is not None:
            trainer = self.llm.trainer
            kept = {k: v for k, v in (trainer.metric_values or {}).items() if not k.startswith("eval")}
            trainer.metric_values = {**kept, **history.eval_metric_values(state.log_history)}
        if self.generation_samples and self._generated_at != state.global_step:
            self._generated_at = state.global_step  # once per evaluation, not per eval set
            self._record_generations(state.global_step, kwargs.get("model"), kwargs.get("processing_class"))
        self.llm.save()

    def _record_generations(self, step: int, model, tokenizer) -> None:
        """Append ``{"step", "set", "input", "generation", "target"}`` per sample prompt to
        ``metric_values['generations']`` of the model."""
        from superduper_transformers.hf.generate import generate_texts

        samples = self.generation_samples
        settings = self.llm.generate_kwargs() if hasattr(self.llm, "generate_kwargs") else {}
        texts = generate_texts(
            model,
            tokenizer,
            [s["prompt"] for s in samples],
            add_special_tokens=samples[0]["special_tokens"],
            **{**settings, "do_sample": False, "num_beams": 1},
        )
        recorded = self.llm.metric_values.setdefault("generations", [])
        for s, text in zip(samples, texts):
            recorded.append(
                {
                    "step": step,
                    "set": s["set"],
                    "input": s["input"],
                    "generation": text,
                    "target": s["target"],
                }
            )

    def on_train_end(self, args, state, control, **kwargs):
        """Point the model at the run's last checkpoint, or its best with ``load_best_model_at_end``.

        As in transformers: the trained model is the last one unless the user asked for
        the best. Then prune again: with the best in use, the last may go (as
        transformers' ``save_total_limit=1`` keeps only the best at the end).
        """
        if not state.is_world_process_zero:
            return
        self._connect()
        rows = ckpts.list_checkpoints(self.db, self.identifier, self.run_id)
        if not rows:
            return
        metric, greater = best_metric_name(args)
        best = ckpts.best_checkpoint(rows, metric, greater)
        chosen = best if args.load_best_model_at_end and best is not None else rows[-1]
        # Usually the last save already pointed the model (and its row) there: no load, no write.
        held = getattr(self.llm.adapter_id, "identifier", None)
        if held != chosen["identifier"] or promote.stored_pointer(self.db, self.identifier) != held:
            promote.point_at(self.db, self.llm, self.db.load("Checkpoint", chosen["identifier"]))
        self._prune(args)
        which = "best" if args.load_best_model_at_end and best is not None else "last"
        logging.info(f"{self.identifier}: adapter set to the {which} checkpoint {chosen['identifier']}")


def register_final_checkpoint(
    db: Datalayer,
    llm: t.Any,
    folder: str,
    experiment_id: str,
    data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
    load_best: bool = False,
):
    """Register the HF checkpoint ``folder`` (the end of a run) and point ``llm`` at it.

    For runs recorded only at the end: a Ray run with ``log_to_db=False``
    (``handle_ray_results``) and a local one likewise. With ``load_best`` the run's best
    checkpoint (``best_model_checkpoint`` in its trainer state) is registered too, when its
    folder is still there, and ``llm`` points at it.

    :param db: The datalayer.
    :param llm: The trained ``LLM``.
    :param folder: An HF checkpoint folder (with ``trainer_state.json``).
    :param experiment_id: The run's identifier.
    :param data_fingerprint: The fingerprint of the run's training data (lineage).
    :param load_best: ``load_best_model_at_end`` of the run.
    :return: the ``Checkpoint`` the model points at.
    """
    state = _trainer_state(folder)
    folders = [folder]
    best = state.get("best_model_checkpoint")
    if load_best and best:
        if os.path.isdir(best) and os.path.abspath(best) != os.path.abspath(folder):
            folders.insert(0, best)
        elif not os.path.isdir(best):
            logging.warn(
                f"{llm.identifier}: the best checkpoint {best} is not on this machine; "
                "the model points at the last one."
            )
    for path in folders:
        step_state = _trainer_state(path)
        ckpt = ckpts.register_checkpoint(
            db,
            model=llm.identifier,
            experiment_id=experiment_id,
            path=path,
            step=step_state["global_step"],
            metrics=latest_metrics(state.get("log_history", []), step_state["global_step"]),
            data_fingerprint=data_fingerprint,
        )
        if path == folders[0]:
            chosen = ckpt
    before = getattr(llm.adapter_id, "identifier", None)
    llm.adapter_id = chosen
    llm.save()
    promote.record_move(db, llm.identifier, before, chosen.identifier, promote.TRAIN, run=experiment_id)
    history.record_history(
        db, llm.identifier, experiment_id, state.get("log_history", []), 0, state["global_step"]
    )
    return chosen


def _trainer_state(folder: str) -> t.Dict[str, t.Any]:
    with open(os.path.join(folder, "trainer_state.json")) as f:
        return json.load(f)


class SaveTheLastStep(TrainerCallback):
    """Save at the last step, whatever the save schedule says.

    With ``save_strategy="no"`` (or ``save_steps`` that do not divide ``max_steps``, or an
    early stop) the HF trainer never saves the final weights, and a training recorded in
    the db would leave nothing behind: the run would be ``finished`` with its weights lost.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        # Early stopping decides in `on_evaluate` (its callback runs before this one),
        # before the trainer's save of this step: the step it stops at is saved too.
        if control.should_training_stop:
            control.should_save = True
        return control


def recording_callbacks(
    job: t.Any,
    identifier: str,
    *,
    db: t.Optional[Datalayer] = None,
    llm: t.Any = None,
    cfg: t.Optional[t.Dict] = None,
    log_to_db: bool = True,
) -> t.List[t.Any]:
    """The callbacks that record a training in the db, for this process or a Ray worker.

    The one list both launchers use: :class:`LLMCallback` (checkpoints, metrics; with
    ``log_to_db``), then the run's live progress (when the job belongs to a run).

    :param job: The ``TrainJob``.
    :param identifier: The ``LLM``'s identifier.
    :param db: The datalayer (this process), with ``llm``.
    :param llm: The ``LLM`` being trained (this process).
    :param cfg: The datalayer's config instead (a Ray worker rebuilds it on rank 0).
    :param log_to_db: Record checkpoints and metrics during training.
    """
    from superduper_transformers.launch.progress import ProgressCallback, mean_tokens_per_example

    out: t.List[t.Any] = []
    recorder = None
    if log_to_db:
        recorder = LLMCallback(
            db=db,
            llm=llm,
            cfg=cfg,
            identifier=identifier,
            experiment_id=job.experiment_id,
            data_fingerprint=job.data_fingerprint,
            generation_samples=job.generation_samples,
        )
        out.append(recorder)
    if job.experiment_id:
        out.append(
            ProgressCallback(
                identifier,
                job.experiment_id,
                db=db,
                cfg=cfg,
                tokens_per_example=mean_tokens_per_example(job.train_dataset),
                # one datalayer on a Ray worker's rank 0, not two
                connect=recorder.datalayer if (recorder is not None and cfg is not None) else None,
            )
        )
    return out
