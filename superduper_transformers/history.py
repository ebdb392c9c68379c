"""The metric history of a training run, by step, kept in the db across resumes.

The HF trainer keeps every log entry in ``state.log_history`` (the training loss at each
logging step, each evaluation's ``eval_*`` metrics) and saves that list with each
checkpoint (``trainer_state.json``); resuming restores it from the checkpoint.
``LLMCallback`` appends, at every save, the entries logged since its previous save to the
``training_history`` table: one row per save, ``{model, experiment_id, from_step,
to_step, time, entries}``. A resumed run's first row starts at the checkpoint's step, so
reading the rows in order, each replacing the entries after its ``from_step``, gives
every logging step once, in order, across any number of resumes. Rows are appended, never
rewritten: a save costs the new entries only (a component field holding the whole list
was hashed by every apply: seconds per save for a long run).
Runs recorded before this table existed fall back to the ``trainer_state.json`` of the
run's latest stored checkpoint.
"""

from __future__ import annotations

import dataclasses as dc
import json
import math
import os
import time
import typing as t
import weakref

from superduper import logging

from superduper_transformers import checkpoint as ckpts
from superduper_transformers.store import sql_writes
from superduper_transformers.store.datalayer import ensure_table

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: The table of history rows (a plain data table, not a component).
TABLE = "training_history"
_FIELDS = {
    "model": "str",
    "experiment_id": "str",
    "from_step": "int",
    "to_step": "int",
    "time": "float",
    "entries": "json",
}

#: Datalayers known to hold the table.
_have_table: weakref.WeakSet[t.Any] = weakref.WeakSet()

#: Eval keys that time the evaluation or count tokens rather than measure the model.
TIMING_METRICS = ("runtime", "samples_per_second", "steps_per_second", "num_tokens")
#: Training log keys that are bookkeeping, not series worth plotting.
_NOT_SERIES = ("step", "epoch", "total_flos")


class HistoryError(ValueError):
    """The model or run asked for has no history in the db."""


def clean_log_history(log_history: t.Iterable[t.Mapping]) -> t.List[t.Dict[str, t.Any]]:
    """The entries of a log history that carry a step, with only finite numbers (JSON-safe).

    :param log_history: ``state.log_history`` of an HF trainer (or of ``trainer_state.json``).
    """
    out = []
    for entry in log_history:
        if "step" not in entry:
            continue
        clean = {
            k: (int(v) if k == "step" else float(v))
            for k, v in entry.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        out.append(clean)
    return out


def record_history(
    db: Datalayer,
    model: str,
    experiment_id: str,
    log_history: t.Iterable[t.Mapping],
    from_step: int,
    to_step: int,
) -> int:
    """Append the entries logged after ``from_step`` as one row of the run's history.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run.
    :param log_history: ``state.log_history`` (the whole run so far; a resume restores it).
    :param from_step: The step of the previous row, or the step training (re)started from:
        entries stored for later steps are replaced by these.
    :param to_step: The step of this save.
    :return: how many entries were written.
    """
    entries = [e for e in clean_log_history(log_history) if from_step < e["step"] <= to_step]
    _ensure_table(db)
    row = {
        "model": model,
        "experiment_id": experiment_id,
        "from_step": int(from_step),
        "to_step": int(to_step),
        "time": time.time(),
        "entries": entries,
    }
    # One INSERT on SQLite (superduper-sql's insert builds a temporary table per row).
    if sql_writes.insert_row(db, TABLE, row, json_columns=("entries",)) is None:
        db[TABLE].insert([row])
    return len(entries)


def stored_history(db: Datalayer, model: str, experiment_id: str) -> t.List[t.Dict[str, t.Any]]:
    """The run's history from its rows: each row replaces what was stored after its ``from_step``.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run.
    """
    return _merge(_rows(db, model, experiment_id))


def _rows(db: Datalayer, model: str, experiment_id: str) -> t.List[t.Dict[str, t.Any]]:
    if TABLE not in db.show("Table"):
        return []
    table = db[TABLE]
    return (
        table.filter(table["model"] == model, table["experiment_id"] == experiment_id)
        .select("from_step", "to_step", "time", "entries")
        .execute()
    )


def _merge(rows: t.Iterable[t.Mapping[str, t.Any]]) -> t.List[t.Dict[str, t.Any]]:
    """The entries of a run's rows, read in step order, each row replacing the entries
    after its ``from_step``. By step, not by the time a row was written: after a restart
    rank 0 may run on another machine, whose clock can be behind. The time only orders
    rows of the same step (a resume writing again what an attempt before it wrote)."""
    out: t.List[t.Dict[str, t.Any]] = []
    for row in sorted(rows, key=lambda r: (r["to_step"], r["time"])):
        out = [e for e in out if e["step"] <= row["from_step"]] + list(row["entries"] or [])
    return out


def fill_gap(
    db: Datalayer, model: str, experiment_id: str, log_history: t.Iterable[t.Mapping], step: int
) -> int:
    """Write the entries up to ``step`` that the run's rows lack (a resume from ``step``).

    A process that died between registering a checkpoint and writing its history row
    left the steps before that checkpoint unrecorded; the resumed trainer restores the
    whole log history from the checkpoint, so they can be written now.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run.
    :param log_history: ``state.log_history`` as restored from the checkpoint.
    :param step: The step training resumes from.
    :return: how many entries were written.
    """
    covered = max((r["to_step"] for r in _rows(db, model, experiment_id) if r["to_step"] <= step), default=0)
    if covered >= step:
        return 0
    return record_history(db, model, experiment_id, log_history, covered, step)


def forget(db: Datalayer, model: str) -> None:
    """Remove the history rows of every run of ``model`` (when the model is deleted).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    """
    if TABLE in db.show("Table"):
        db[TABLE].delete({"model": model})


def _ensure_table(db: Datalayer) -> None:
    # Once seen, a table stays (nothing here drops it): one listing per datalayer, not per save.
    if db in _have_table:
        return
    ensure_table(db, TABLE, _FIELDS, jobs=False)
    _have_table.add(db)


def eval_metric_values(log_history: t.Iterable[t.Mapping]) -> t.Dict[str, t.List[float]]:
    """``trainer.metric_values`` as ``LLM.append_metrics`` builds it, from the whole history.

    Every eval metric as a list over evaluations, plus ``<eval prefix>_step`` (the step of
    each evaluation of that set). Rebuilt from the restored history, it is continuous
    across a resume (appending would restart it, or repeat evaluations after the checkpoint).
    """
    out: t.Dict[str, t.List[float]] = {}
    for entry in clean_log_history(log_history):
        evals = {k: v for k, v in entry.items() if k.startswith("eval_")}
        if not evals:
            continue
        evals[f"{eval_prefix(evals)}_step"] = float(entry["step"])
        for k, v in evals.items():
            out.setdefault(k, []).append(v)
    return out


def eval_prefix(metrics: t.Mapping[str, t.Any]) -> str:
    """``eval`` or ``eval_<name>`` for a named eval set, from keys like ``eval_<name>_loss``."""
    for k in metrics:
        if k.startswith("eval") and k.endswith("_loss"):
            return k[: -len("_loss")]
    return "eval"


@dc.dataclass
class History:
    """The log history of one run of a model.

    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run.
    :param entries: Log entries in order, each with its ``step`` (see :func:`clean_log_history`).
    :param objective: The run's training objective (``sft``, ``dpo``...): which metrics it logs.
    """

    model: str
    experiment_id: str
    entries: t.List[t.Dict[str, t.Any]]
    objective: str = "sft"

    def training(self, metric: str = "loss") -> t.Tuple[t.List[int], t.List[float]]:
        """Steps and values of a training-log metric (``loss``, ``learning_rate``, ...)."""
        rows = [(e["step"], e[metric]) for e in self.entries if metric in e and not _is_eval(e)]
        return [s for s, _ in rows], [v for _, v in rows]

    def evaluations(self) -> t.Dict[str, t.Dict[str, t.Tuple[t.List[int], t.List[float]]]]:
        """``{metric: {eval set: (steps, values)}}`` of every eval metric but timings and counts.

        One unnamed eval set (rows with ``_fold='valid'``) is called ``eval``; named sets
        (``eval_<set>_loss``) by their name.
        """
        out: t.Dict[str, t.Dict[str, t.Tuple[t.List[int], t.List[float]]]] = {}
        for entry in self.entries:
            if not _is_eval(entry):
                continue
            prefix = eval_prefix(entry)
            name = prefix[len("eval_") :] if prefix != "eval" else "eval"
            for k, v in entry.items():
                # One entry is one evaluation of one set. trl logs its own metrics
                # (`eval_mean_token_accuracy`, `eval_entropy`) without the set's name.
                if k.startswith(prefix + "_"):
                    metric = k[len(prefix) + 1 :]
                elif k.startswith("eval_"):
                    metric = k[len("eval_") :]
                else:
                    continue
                if metric in TIMING_METRICS:
                    continue
                steps, values = out.setdefault(metric, {}).setdefault(name, ([], []))
                steps.append(entry["step"])
                values.append(v)
        return out

    def training_metrics(self) -> t.List[str]:
        """Names of the training-log metrics (``loss``, ``grad_norm``, ``learning_rate``, ...)."""
        names: t.Dict[str, None] = {}
        for e in self.entries:
            if not _is_eval(e) and "loss" in e:
                names.update({k: None for k in e if k not in _NOT_SERIES})
        return list(names)


def _is_eval(entry: t.Mapping) -> bool:
    return any(k.startswith("eval_") for k in entry)


def run_of_model(db: Datalayer, model: str, experiment_id: t.Optional[str] = None):
    """The run of ``model`` to show: ``experiment_id``, else the run of the checkpoint the
    model uses, else its latest run.

    :raises HistoryError: naming the model and the runs it has.
    """
    from superduper.base import exceptions

    if model not in db.show("LLM"):
        raise HistoryError(
            f"Model `{model}` is not in the database (models: {sorted(db.show('LLM'))}). "
            "Check the name (`superduper-transformers models` lists them)."
        )
    runs = {r.experiment_id: r for r in _runs(db, model)}
    if experiment_id is None:
        try:
            in_use = db.load("LLM", model).adapter_id
        except (exceptions.NotFound, ckpts.CheckpointError, FileNotFoundError):
            in_use = None
        experiment_id = getattr(in_use, "experiment_id", None)
        if experiment_id not in runs:
            experiment_id = max(runs.values(), key=lambda r: r.started_at).experiment_id if runs else None
    if experiment_id not in runs:
        raise HistoryError(
            f"Model `{model}` has no training run {experiment_id!r} in the database "
            f"(its runs: {sorted(runs)}). Train it with `db.apply(llm)` first, or name one of its runs."
        )
    return runs[experiment_id]


def metric_history(db: Datalayer, model: str, experiment_id: t.Optional[str] = None) -> History:
    """The log history of a run of ``model`` (see :func:`run_of_model` for which run).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run (default: the one whose checkpoint the model uses).
    :raises HistoryError: when the model or the run is unknown.
    """
    run = run_of_model(db, model, experiment_id)
    entries = stored_history(db, model, run.experiment_id)
    if not entries:  # a run recorded before the history table existed
        entries = _history_of_latest_checkpoint(db, model, run.experiment_id)
    return History(model, run.experiment_id, entries, (run.settings or {}).get("objective") or "sft")


def _history_of_latest_checkpoint(db: Datalayer, model: str, experiment_id: str) -> t.List[t.Dict]:
    for row in reversed(ckpts.list_checkpoints(db, model, experiment_id)):
        try:
            folder = ckpts.load_checkpoint(db, row["identifier"]).local_path
        except ckpts.CheckpointError as e:
            logging.warn(f"No history from {row['identifier']}: {e}")
            continue
        path = os.path.join(folder, "trainer_state.json")
        if os.path.isfile(path):
            with open(path) as f:
                return clean_log_history(json.load(f).get("log_history", []))
    return []


def _runs(db: Datalayer, model: str) -> t.List[t.Any]:
    """The model's ``TrainingRun`` components."""
    from superduper_transformers.store import records

    return records.runs(db, model)
