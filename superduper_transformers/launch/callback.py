"""``LLMCallback``: write checkpoints and metrics of an HF training run into the datalayer.

Each event does one job, on the main process (rank 0) only:
``on_save`` registers the checkpoint just written (and prunes the run's old ones),
``on_evaluate`` records eval metrics on the model, ``on_train_end`` points the
model at its best (else last) checkpoint.
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

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer


def best_metric_name(args) -> t.Tuple[t.Optional[str], bool]:
    """``metric_for_best_model`` as it appears in logged metrics, and its direction.

    transformers prefixes the name with ``eval_`` when it is not there already;
    without a setting, the eval loss (lower is better) decides, as in transformers.
    """
    metric = args.metric_for_best_model or "loss"
    if not metric.startswith("eval_"):
        metric = f"eval_{metric}"
    greater = args.greater_is_better
    if greater is None:
        greater = not metric.endswith("loss")
    return metric, bool(greater)


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
    """

    def __init__(
        self,
        cfg: t.Optional[t.Any] = None,
        identifier: t.Optional[str] = None,
        db: t.Optional[Datalayer] = None,
        llm: t.Optional[t.Any] = None,
        experiment_id: t.Optional[str] = None,
        data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
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

    # -- connection -------------------------------------------------------
    def _connect(self) -> None:
        """Rebuild the datalayer and load the model (Ray workers, rank 0 only)."""
        if self.db is not None and self.llm is not None:
            return
        from superduper_transformers.store.datalayer import datalayer_from_config

        self.db = datalayer_from_config(self.cfg)
        self.llm = self.db.load("LLM", self.identifier)

    @property
    def run_id(self) -> str:
        """The run these checkpoints belong to."""
        return self.experiment_id

    # -- events -----------------------------------------------------------
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
        self.llm.adapter_id = ckpt
        self.llm.save()
        self._prune(args)

    def _prune(self, args) -> None:
        if args.save_total_limit is None:
            # Every checkpoint is kept: reading the run's rows (one more at each save)
            # would make each save cost more than the one before.
            return
        rows = ckpts.list_checkpoints(self.db, self.identifier, self.run_id)
        metric, greater = best_metric_name(args)
        doomed = ckpts.checkpoints_to_prune(rows, args.save_total_limit, metric, greater)
        kept = [r for r in rows if r not in doomed]
        # The model must not point at a checkpoint about to be deleted.
        current = getattr(self.llm.adapter_id, "identifier", None)
        if current in {r["identifier"] for r in doomed}:
            best = ckpts.best_checkpoint(kept, metric, greater) or kept[-1]
            self.llm.adapter_id = self.db.load("Checkpoint", best["identifier"])
            self.llm.save()
        for r in doomed:
            ckpts.delete_checkpoint(self.db, r["identifier"])

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        """Record the eval metrics (one entry per eval set) on the model in the db."""
        if not state.is_world_process_zero or not metrics:
            return
        self._connect()
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        numeric.pop("step", None)
        numeric[f"{_eval_prefix(numeric)}_step"] = float(state.global_step)
        self.llm.append_metrics(numeric)
        self.llm.save()

    def on_train_end(self, args, state, control, **kwargs):
        """Point the model at the run's best checkpoint (else its last)."""
        if not state.is_world_process_zero:
            return
        self._connect()
        rows = ckpts.list_checkpoints(self.db, self.identifier, self.run_id)
        if not rows:
            return
        metric, greater = best_metric_name(args)
        chosen = ckpts.best_checkpoint(rows, metric, greater) or rows[-1]
        self.llm.adapter_id = self.db.load("Checkpoint", chosen["identifier"])
        self.llm.save()
        logging.info(f"{self.identifier}: adapter set to checkpoint {chosen['identifier']}")


def register_final_checkpoint(
    db: Datalayer,
    llm: t.Any,
    folder: str,
    experiment_id: str,
    data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
):
    """Register the HF checkpoint ``folder`` (the end of a run) and point ``llm`` at it.

    For runs recorded only at the end: a Ray run with ``log_to_db=False``
    (``handle_ray_results``) and a local one likewise.

    :param db: The datalayer.
    :param llm: The trained ``LLM``.
    :param folder: An HF checkpoint folder (with ``trainer_state.json``).
    :param experiment_id: The run's identifier.
    :param data_fingerprint: The fingerprint of the run's training data (lineage).
    :return: the registered ``Checkpoint``.
    """
    with open(os.path.join(folder, "trainer_state.json")) as f:
        state = json.load(f)
    ckpt = ckpts.register_checkpoint(
        db,
        model=llm.identifier,
        experiment_id=experiment_id,
        path=folder,
        step=state["global_step"],
        metrics=latest_metrics(state.get("log_history", []), state["global_step"]),
        data_fingerprint=data_fingerprint,
    )
    llm.adapter_id = ckpt
    llm.save()
    return ckpt


class SaveTheLastStep(TrainerCallback):
    """Save at the last step, whatever the save schedule says.

    With ``save_strategy="no"`` (or ``save_steps`` that do not divide ``max_steps``) the
    HF trainer never saves the final weights, and a training recorded in the db would
    leave nothing behind: the run would be ``finished`` with its weights lost.
    """

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
        return control


def _eval_prefix(metrics: t.Dict[str, float]) -> str:
    """``eval`` or ``eval_<name>`` for a named eval set, from keys like ``eval_<name>_loss``."""
    for k in metrics:
        if k.endswith("_loss"):
            return k[: -len("_loss")]
    return "eval"
