"""Training runs in the db, and resuming an interrupted one from its latest checkpoint.

This module owns the run lifecycle: the ``TrainingRun`` row, the ``training_run``
marker on the model row (:func:`start_run`, :func:`finish_run`,
:func:`show_interrupted_run`), and the decision to train again on a re-apply
(:func:`is_interrupted`, asked by ``LLM.create_jobs``).

Every training of an ``LLM`` is a ``TrainingRun`` row (``state='running'``) from its
start until ``fit`` returns (``state='finished'``). A process that is killed, or a
training that raises, leaves the row ``running``: the run is *interrupted*. Applying
the model again (``db.apply(llm, force=True)`` with a freshly built, identical ``LLM``)
then trains again, and with ``LLMTrainer(resume_from_db="auto")`` (the default) it
resumes the interrupted run: the latest checkpoint of that run whose stored files
verify is copied to ``output_dir/<experiment_id>/checkpoint-<step>`` and handed to the HF trainer as
``resume_from_checkpoint`` (weights or adapter, optimizer, scheduler, RNG and trainer
state), under the same ``experiment_id``, so later checkpoints continue its steps.

Each run writes into a folder of its own under the trainer's output folder
(:func:`run_dir`): transformers writes into an existing ``checkpoint-<step>`` folder
without clearing it, so a run in a reused folder would register files of an earlier
run (a LoRA run's ``adapter_config.json`` in a full fine-tune's checkpoint). The ``checkpoint-*``
folders of the model's runs that are no longer running are removed when a run starts
(they are in the artifact store); the rest of their folders (TensorBoard logs) is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import json
import os
import re
import shutil
import time
import typing as t
import uuid

from superduper import Component, logging

from superduper_transformers import checkpoint as ckpts
from superduper_transformers import data_cache, history, lineage, promote
from superduper_transformers._private import private_dir
from superduper_transformers.store import artifacts, records, sql_components, sql_writes

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: transformers' ``trainer_utils.PREFIX_CHECKPOINT_DIR`` (a test keeps them equal).
#: Importing that module imports peft and bitsandbytes, about 10 s on a CPU, into
#: every process that opens the package, e.g. each ``superduper-transformers status``.
PREFIX_CHECKPOINT_DIR = "checkpoint"

RUNNING, FINISHED, ABANDONED = "running", "finished", "abandoned"

#: Settings that may differ between an interrupted run and the training that resumes it:
#: bookkeeping, the length of training (the schedule is rebuilt from the new length), and
#: the batch layout where it keeps the examples of each step (not ``packing``).
#: Any other change (learning rate, LoRA rank, model, ...) starts a fresh run instead.
CHANGES_THAT_RESUME = frozenset(
    {
        "output_dir",
        "logging_steps",
        "save_steps",
        "eval_steps",
        "save_total_limit",
        "disable_tqdm",
        "report_to",
        "dataloader_num_workers",
        "max_steps",
        "num_train_epochs",
        "resume_from_db",
        "log_to_db",
        "on_data_change",
        # Which checkpoint the model points at in the end, and what is observed or
        # recorded on the side: none of it changes the optimisation of the steps done.
        "load_best_model_at_end",
        "callbacks",
        "early_stopping_patience",
        "early_stopping_threshold",
        "record_generations",
        # Padded or padding-free: the same examples per step, the same loss.
        "padding_free",
    }
)


class DataChangedError(ValueError):
    """The interrupted run's training data changed and ``on_data_change='refuse'``."""


class TrainingRun(Component):
    """One training of an ``LLM``: its identity, state and the settings it was started with.

    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run's identifier; its checkpoints carry it.
    :param state: ``running`` (started, or interrupted), ``finished`` or ``abandoned``
        (interrupted, then replaced by a fresh run).
    :param settings: The settings that shape training (see :func:`run_settings`).
    :param started_at: Unix time of the first start.
    :param resumes: One entry per resumption: ``{"step", "checkpoint", "time"}``, and
        ``"data_changes"`` (what changed in the data) when it resumed on changed rows.
    :param data_fingerprint: The data it trains on: query, row counts, content hashes,
        tokenization settings (:func:`superduper_transformers.lineage.data_fingerprint`);
        updated when a resume goes on with changed rows; empty for runs recorded before
        fingerprints existed.
    :param progress: Live progress, written every logging step by the training's
        ``ProgressCallback`` (:mod:`superduper_transformers.launch.progress`): ``step``,
        ``max_steps``, ``loss``, ``tokens_per_s``, ``eta_s``, ``updated_at``, ``phase``
        (``training``, ``ended``, ``interrupted``); empty before the first log and for
        runs recorded before the field existed.
    """

    model: str = ""
    experiment_id: str = ""
    state: str = RUNNING
    settings: t.Dict = None  # type: ignore[assignment]
    started_at: float = 0.0
    resumes: t.List = None  # type: ignore[assignment]
    data_fingerprint: t.Dict = None  # type: ignore[assignment]
    progress: t.Dict = None  # type: ignore[assignment]

    def postinit(self):
        """Fill defaults that dataclasses cannot hold as mutable defaults."""
        self.progress = dict(self.progress or {})  # None: a row from before the field
        self.settings = dict(self.settings or {})
        self.resumes = list(self.resumes or [])
        self.data_fingerprint = dict(self.data_fingerprint or {})
        super().postinit()


@dc.dataclass
class RunPlan:
    """How ``fit`` starts: which run, and the local checkpoint folder to resume from.

    :param experiment_id: The run's identifier.
    :param resume_from_checkpoint: Verified local copy of the checkpoint, or None.
    :param step: Global step training starts from.
    :param output_dir: The run's own folder, where the HF trainer writes (:func:`run_dir`).
    """

    experiment_id: str
    resume_from_checkpoint: t.Optional[str] = None
    step: int = 0
    output_dir: t.Optional[str] = None


def run_dir(output_dir: str, experiment_id: str) -> str:
    """The folder of run ``experiment_id`` under the trainer's ``output_dir``, owner-only
    (created when missing).

    :param output_dir: The trainer's output folder.
    :param experiment_id: The run.
    """
    private_dir(output_dir)  # weights: owner-only, as in the store
    return private_dir(os.path.join(output_dir, experiment_id))


def _remove_checkpoints_of_ended_runs(db: Datalayer, model: str, output_dir: str) -> None:
    """Remove the local ``checkpoint-*`` folders of ``model``'s runs that no longer run
    (finished or abandoned: their checkpoints are in the store), so that disk use does not
    grow with the runs. Only in folders named by a run of this model; the rest of a run's
    folder (TensorBoard's ``runs/``, Ray's results) is kept."""
    for run in records.runs(db, model):
        folder = os.path.join(output_dir, run.experiment_id)
        if run.state == RUNNING or not os.path.isdir(folder) or os.path.islink(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-\d+", name) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)


def run_identifier(model: str, experiment_id: str) -> str:
    """The identifier of the ``TrainingRun`` row of run ``experiment_id`` of ``model``."""
    return f"{model}-run-{experiment_id}"


def unfinished_runs(db: Datalayer, model: str) -> t.List[TrainingRun]:
    """The runs of ``model`` left ``running`` in the db, oldest first."""
    return records.runs(db, model, RUNNING)


def is_interrupted(db: Datalayer, model: str) -> bool:
    """Whether ``model`` has a run left ``running`` (asked of a model not in training).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    """
    return bool(records.run_identifiers(db, model, RUNNING))  # asked at every setup: no loads


#: The attribute that marks an ``LLM`` object as the one a training records on.
_IN_TRAINING = "_sdt_in_training"


def in_training(model: t.Any) -> bool:
    """Whether ``model`` (this object) is being trained: its saves are bookkeeping (a
    checkpoint, a pointer, the run's marker), not applies to plan again."""
    return bool(getattr(model, _IN_TRAINING, False))


def mark_training(model: t.Any) -> t.Any:
    """Mark ``model`` (this object) as in training (a Ray worker's copy, the copy that
    records the end of the run). Returns ``model``."""
    setattr(model, _IN_TRAINING, True)
    return model


@contextlib.contextmanager
def training(model: t.Any):
    """Mark ``model`` (this object) as in training for the duration of the block."""
    before = in_training(model)
    mark_training(model)
    try:
        yield model
    finally:
        setattr(model, _IN_TRAINING, before)


def latest_verified_checkpoint(db: Datalayer, model: str, experiment_id: str) -> t.Optional[ckpts.Checkpoint]:
    """The run's checkpoint with the highest step whose stored files match the manifest.

    A checkpoint that fails verification is skipped with a warning naming the file.
    """
    for row in reversed(ckpts.list_checkpoints(db, model, experiment_id)):
        try:
            return ckpts.load_checkpoint(db, row["identifier"])
        except ckpts.CheckpointError as e:
            logging.warn(f"Not resuming from {row['identifier']}: {e}")
    return None


def fetch_checkpoint(ckpt: ckpts.Checkpoint, output_dir: str) -> str:
    """Copy a verified checkpoint to ``output_dir/checkpoint-<step>`` and verify the copy.

    Local ``checkpoint-*`` folders at this step or later are removed first: they are
    leftovers of the interrupted process (maybe half written) and the HF trainer would
    otherwise mix them with the resumed run's saves.
    """
    private_dir(output_dir)  # weights: owner-only, as in the store
    for name in os.listdir(output_dir):
        m = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if m and int(m.group(1)) >= ckpt.step:
            shutil.rmtree(os.path.join(output_dir, name))
    dest = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{ckpt.step}")
    shutil.copytree(ckpt.local_path, dest)
    ckpts.verify_directory(dest, ckpt.manifest, ckpt.identifier)
    return dest


def changed_settings(run: TrainingRun, settings: t.Dict, ignore: t.Iterable[str] = ()) -> t.List[str]:
    """The settings that differ between ``run`` and a training with ``settings``, those
    that may change on a resume and ``ignore`` aside."""
    ignored = CHANGES_THAT_RESUME | set(ignore)
    keys = (set(run.settings) | set(settings)) - ignored  # rows stored before a key joined
    return sorted(k for k in keys if run.settings.get(k) != settings.get(k))


def latest_run(db: Datalayer, model: str) -> t.Optional[TrainingRun]:
    """The run of ``model`` started last (any state), or None."""
    runs = records.runs(db, model)
    return runs[-1] if runs else None


def _resumable(run: TrainingRun, policy: str, settings: t.Dict) -> bool:
    """Whether the interrupted ``run`` may be resumed with these settings (logs why not)."""
    if policy == "never":
        logging.info(f"Run {run.experiment_id} was interrupted; `resume_from_db='never'`: starting fresh")
        return False
    changed = changed_settings(run, settings)
    if changed:
        logging.warn(
            f"Run {run.experiment_id} of {run.model} was interrupted, but these settings "
            f"changed since: {changed}. Starting a fresh run (resuming would continue its "
            "optimizer state under other settings)."
        )
        return False
    return True


def refuse_changed_data(
    db: Datalayer,
    model: str,
    settings: t.Dict[str, t.Any],
    data_fingerprint: t.Dict[str, t.Any],
    resume_from_db: str = "auto",
    on_data_change: str = "warn",
) -> None:
    """Raise if the run that would be resumed trained on other data and the policy refuses.

    Reads only: called by the preflight of ``db.apply`` (before anything is written) and
    again by :func:`start_run` (before the run is touched).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param settings: The settings of the training about to start (a run whose settings
        differ is not resumed, so its data does not matter).
    :param data_fingerprint: The fingerprint of the data now.
    :param resume_from_db: ``"auto"`` or ``"never"`` (nothing is resumed: nothing to refuse).
    :param on_data_change: ``"warn"``, ``"refuse"`` or ``"restart"``.
    :raises DataChangedError: naming the run, what changed and the fixes.
    """
    if on_data_change != "refuse" or resume_from_db == "never":
        return
    runs = unfinished_runs(db, model)
    if not runs or changed_settings(runs[-1], settings):
        return
    run = runs[-1]
    changes = lineage.data_changes(run.data_fingerprint, data_fingerprint)
    if changes:
        raise DataChangedError(
            f"Run {run.experiment_id} of {model} was interrupted, and its training data changed "
            f"since: {'; '.join(changes)}. `on_data_change='refuse'`: not resuming it, and nothing "
            "was written. Restore the rows it trained on, or set `on_data_change='warn'` (resume "
            "on the new rows) or `on_data_change='restart'` (a fresh run), or "
            "`resume_from_db='never'`."
        )


def start_run(
    db: Datalayer,
    model: t.Any,
    settings: t.Dict[str, t.Any],
    output_dir: str,
    resume_from_db: str = "auto",
    data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
    on_data_change: str = "warn",
) -> RunPlan:
    """Resume the interrupted run of ``model`` or record a new one; return how to start.

    Removes the model's orphaned checkpoint folders first (what a crash left).

    :param db: The datalayer.
    :param model: The ``LLM`` component about to be trained (its row records the run).
    :param settings: The settings that shape the training, as JSON (compared with the
        interrupted run's before resuming it).
    :param output_dir: The trainer's output folder: the run writes into its own folder
        there (:func:`run_dir`; a resumed run's checkpoint is copied there).
    :param resume_from_db: ``"auto"`` resumes a compatible interrupted run; ``"never"``.
    :param data_fingerprint: The fingerprint of the training data (recorded on the run,
        compared with the interrupted run's).
    :param on_data_change: When the interrupted run's data changed: ``"warn"`` resumes
        it and logs what changed, ``"refuse"`` raises :class:`DataChangedError`,
        ``"restart"`` abandons it and starts a fresh run.
    """
    data_fingerprint = dict(data_fingerprint or {})
    refuse_changed_data(db, model.identifier, settings, data_fingerprint, resume_from_db, on_data_change)
    artifacts.cleanup_orphan_artifacts(db, model.identifier)
    runs = unfinished_runs(db, model.identifier)
    run = runs.pop() if runs and _resumable(runs[-1], resume_from_db, settings) else None
    changes = lineage.data_changes(run.data_fingerprint, data_fingerprint) if run is not None else []
    if changes:
        what = "; ".join(changes)
        if on_data_change == "restart":
            logging.warn(
                f"Run {run.experiment_id} of {model.identifier} was interrupted, and its training "
                f"data changed since: {what}. `on_data_change='restart'`: starting a fresh run."
            )
            runs.append(run)  # abandoned below
            run = None
        else:
            logging.warn(
                f"Run {run.experiment_id} of {model.identifier} was interrupted, and its training "
                f"data changed since: {what}. Resuming it on the new rows (`on_data_change='warn'`): "
                "its position in the epoch is not meaningful. Set `on_data_change='restart'` to "
                "start afresh, or `'refuse'` to stop."
            )
    for stale in runs:
        update_run(db, stale.identifier, stale, state=ABANDONED)
    _remove_checkpoints_of_ended_runs(db, model.identifier, output_dir)
    if run is None:
        experiment_id = uuid.uuid4().hex[:8]
        run = TrainingRun(
            run_identifier(model.identifier, experiment_id),
            model=model.identifier,
            experiment_id=experiment_id,
            settings=settings,
            started_at=time.time(),
            data_fingerprint=data_fingerprint,
        )
        plan = RunPlan(experiment_id, output_dir=run_dir(output_dir, experiment_id))
        sql_components.apply_new(db, run)  # a new row: one INSERT on SQLite
    else:
        ckpt = latest_verified_checkpoint(db, model.identifier, run.experiment_id)
        folder = run_dir(output_dir, run.experiment_id)
        plan = RunPlan(run.experiment_id, output_dir=folder)
        if ckpt is not None:
            plan = RunPlan(run.experiment_id, fetch_checkpoint(ckpt, folder), ckpt.step, folder)
        checkpoint = ckpt.identifier if ckpt is not None else None
        entry = {"step": plan.step, "checkpoint": checkpoint, "time": time.time()}
        if changes:
            entry["data_changes"] = changes
        run.resumes.append(entry)
        fields: t.Dict[str, t.Any] = {"resumes": run.resumes}
        if data_fingerprint:
            fields["data_fingerprint"] = data_fingerprint  # the data it goes on with
        logging.info(f"Resuming run {run.experiment_id} of {model.identifier} at step {plan.step}")
        update_run(db, run.identifier, run, **fields)
    _mark_model(db, model, run)
    return plan


def finish_run(db: Datalayer, model: str, experiment_id: str) -> None:
    """Record that run ``experiment_id`` of ``model`` trained to the end.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run.
    """
    identifier = run_identifier(model, experiment_id)
    update_run(db, identifier, state=FINISHED)
    # The stored row, not this process's copy: Ray workers may have pointed it at a new checkpoint.
    marker = {"experiment_id": experiment_id, "state": FINISHED}
    if not _mark_stored_model(db, "LLM", {"identifier": model}, marker):
        llm = mark_training(db.load("LLM", model))
        llm.metric_values["training_run"] = marker
        llm.save()


#: The ``TrainingRun`` fields superduper-sql stores as JSON text.
_JSON_FIELDS = frozenset({"settings", "resumes", "data_fingerprint", "progress"})


def update_run(db: Datalayer, identifier: str, run: t.Optional[TrainingRun] = None, **fields: t.Any) -> None:
    """Set ``fields`` of the stored ``TrainingRun`` ``identifier`` (and of ``run``, its copy).

    On SQLite one ``UPDATE`` of those columns (:func:`..store.sql_writes.update_columns`):
    superduper's apply of the run would load, hash and re-serialize it, about 145 SQL
    statements. Elsewhere, or when the row is not there, superduper's apply (loading the
    run when no copy is given).

    :param db: The datalayer.
    :param identifier: The run's row (:func:`run_identifier`).
    :param run: The run as loaded, when the caller holds it.
    :param fields: ``{field: value}`` of :class:`TrainingRun`, e.g. ``state=FINISHED``.
    """
    values = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in fields.items()}
    written = sql_writes.update_columns(db, "TrainingRun", values, {"identifier": identifier})
    if run is None and not written:
        run = db.load("TrainingRun", identifier)
    for name, value in fields.items():
        if run is not None:
            setattr(run, name, value)
    if not written:
        db.apply(run, force=True, jobs=False)


def _mark_stored_model(
    db: Datalayer, table: str, match: t.Mapping[str, t.Any], marker: t.Dict[str, t.Any]
) -> bool:
    """Set ``metric_values["training_run"]`` in a stored model row of ``table`` (the latest
    version among the rows that ``match``) in one ``UPDATE``, the rest of the column as
    stored. False where that is not possible (another backend, no such row): the caller
    saves the model through superduper."""
    rows = sql_writes.select_rows(db, table, ["uuid", "version", "metric_values"], match)
    if not rows:
        return False
    row = max(rows, key=lambda r: r["version"] or 0)
    try:
        values = json.loads(row["metric_values"] or "{}")
    except (TypeError, ValueError):
        return False
    if not isinstance(values, dict):
        return False
    values["training_run"] = marker
    return (
        sql_writes.update_column(db, table, "metric_values", json.dumps(values), {"uuid": row["uuid"]}) == 1
    )


def _mark_model(db: Datalayer, model: t.Any, run: TrainingRun) -> None:
    """Record the run on the model row too.

    Besides telling the user, this makes the stored row differ from a freshly built
    ``LLM``: superduper skips an apply whose component equals the stored one, so a
    model killed before its first checkpoint could otherwise never be trained again.
    """
    marker = {"experiment_id": run.experiment_id, "state": run.state}
    model.metric_values["training_run"] = marker
    if not _mark_stored_model(
        db, model.component, {"identifier": model.identifier, "uuid": model.uuid}, marker
    ):
        model.save()


def show_interrupted_run(model: t.Any) -> None:
    """Carry an interrupted training run on this copy of ``model`` (in memory).

    superduper skips an apply whose model equals the stored one, and it loads and
    sets up the stored copy to compare them. A process killed right after a
    re-apply wrote the freshly built model, but before its fit job recorded the run
    on it, leaves a stored row equal to a freshly built ``LLM``: the next re-apply
    would do nothing, for ever. Showing the run here (``LLM.setup`` calls this) makes
    the two differ, so the re-apply goes ahead and resumes the run.

    :param model: The ``LLM`` component being set up.
    """
    marker = (model.metric_values or {}).get("training_run") or {}
    if model.db is None or marker.get("state") == RUNNING or in_training(model):
        return
    if is_interrupted(model.db, model.identifier):
        run = unfinished_runs(model.db, model.identifier)[-1]
        model.metric_values["training_run"] = {"experiment_id": run.experiment_id, "state": RUNNING}


def abandon_runs_of_a_deleted_model(db: Datalayer, model: str) -> t.List[str]:
    """Mark ``abandoned`` the runs of ``model`` left ``running`` when the model itself is gone.

    A model deleted with ``db.teardown`` (not :func:`delete_model`) leaves its runs
    behind; a new model applied under the same name must start afresh, not continue
    the deleted one's optimizer state. ``LLM.create_jobs`` calls this when it plans
    the apply of a model that is not in the db.

    :return: the experiment ids marked.
    """
    marked = []
    for run in unfinished_runs(db, model):
        update_run(db, run.identifier, run, state=ABANDONED)
        marked.append(run.experiment_id)
    if marked:
        logging.warn(f"{model}: runs {marked} belonged to a deleted model: not resuming them")
    return marked


def delete_model(db: Datalayer, identifier: str) -> t.Dict[str, int]:
    """Remove the ``LLM`` ``identifier`` with its trainer, all its checkpoints (rows and
    files), its training runs and its tokenized rows in this machine's data cache. Works
    when checkpoint folders are already gone.

    :param db: The datalayer.
    :param identifier: The ``LLM``'s identifier.
    :return: how many of each were removed: ``{"models", "checkpoints", "runs", "folders",
        "cached_datasets"}``.
    """
    # Under the model's lock: no promotion or prune of it runs in between.
    with artifacts.model_lock(db, identifier):
        removed = {"models": 0, "checkpoints": 0, "runs": 0, "folders": 0}
        rows = ckpts.list_checkpoints(db, identifier)
        if identifier in db.show("LLM"):
            # recursive: its trainer and the checkpoint it points at go with it
            db.teardown("LLM", identifier, recursive=True, force=True)
            removed["models"] = 1
        for row in rows:
            if row["identifier"] in db.show("Checkpoint"):
                ckpts.remove_checkpoint(db, row["identifier"])
        removed["checkpoints"] = len(rows)
        for run in _all_runs(db, identifier):
            db.teardown("TrainingRun", run, force=True)
            removed["runs"] += 1
        promote.forget(db, identifier)  # its aliases and promotion history
        history.forget(db, identifier)  # the metric history of its runs
        removed["folders"] = len(artifacts.cleanup_orphan_artifacts(db, identifier))
        # Its tokenized rows on this machine (another model's trainings on the same rows keep theirs).
        removed["cached_datasets"] = len(data_cache.forget_owner(artifacts.model_tag(db, identifier)))
    logging.info(f"Deleted {identifier}: {removed}")
    return removed


def _all_runs(db: Datalayer, model: str) -> t.List[str]:
    return records.run_identifiers(db, model)
