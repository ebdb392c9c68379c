"""The plan of one training: everything decided about it, once, before anything is written.

:func:`build_plan` reads the ``LLM``, its ``LLMTrainer`` and the db and decides, in this
order: the checks (model folder, devices, Ray set-up, optional packages), the rows of
every set (read once, page by page: checked, counted and hashed), the data fingerprint
and the changed-data policy of an interrupted run, the objective's trl config with the
precision, the batch layout and the best metric. ``LLM.create_jobs`` builds it (the
preflight: an error leaves the db as it was) and hands it to ``fit`` through the fit
job's keywords; ``fit`` consumes it and derives nothing again.

The hand-over is the job itself, not state of this module: the plan is stored in the
``Job`` row as JSON (:meth:`TrainingPlan.to_json`), and in the process that planned it
the built objects ride along with that JSON (:class:`PlanJSON`), so the trl config is
constructed once. A job run from its row elsewhere rebuilds them from the JSON without
reading a row again.
"""

from __future__ import annotations

import dataclasses as dc
import json
import typing as t

from superduper import logging

from superduper_transformers import checkpoint, lineage, promote, resume
from superduper_transformers import trainer_args as cfg
from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.hf import data, objectives
from superduper_transformers.hf.loading import check_model_path
from superduper_transformers.launch.dispatch import check_devices
from superduper_transformers.settings import TrainSettings, best_metric, precision_of
from superduper_transformers.store import mix as store_mix
from superduper_transformers.store import rows as store_rows

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Bumped when the JSON form changes; a job with another version re-plans.
PLAN_VERSION = 1


@dc.dataclass(frozen=True)
class RowSet:
    """One set of rows, as read by the plan.

    :param name: ``train``, ``valid`` (rows with ``_fold='valid'``) or the identifier of a
        validation dataset.
    :param count: Rows in the set.
    :param sha256: Hash of the rows projected on the trainer's columns.
    """

    name: str
    count: int
    sha256: str

    @property
    def data_hash(self) -> str:
        """The key of the set's content in the tokenization cache."""
        return f"{self.count}:{self.sha256}"


@dc.dataclass(frozen=True)
class MixPart(RowSet):
    """The training rows of one source of a mix (``LLMTrainer(mix=...)``).

    :param weight: Its weight, as given (the mix draws rows with the normalised weights).
    """

    weight: float = 1.0


@dc.dataclass(frozen=True)
class TrainingPlan:
    """A training of one ``LLM``, decided (see the module docstring).

    :param model: The ``LLM``'s identifier.
    :param objective: ``sft``, ``dpo``...
    :param columns: The row columns read (the trainer's ``key``).
    :param train: The training rows.
    :param evals: The evaluation sets, in order (their names key the eval metrics).
    :param fingerprint: The data fingerprint (lineage, resume).
    :param run_settings: The settings that shape the training (compared before resuming).
    :param config_kwargs: The trl config's keywords, resolved.
    :param best_metric: The metric that ranks checkpoints (``eval_...``), or None.
    :param greater_is_better: Its direction.
    :param config: The constructed trl config (built once, from ``config_kwargs``).
    :param settings: LoRA, quantization, precision, batching: what the lower layers read.
    :param rows: The rows of each set by name (``FoldRows`` read in pages, or lists).
    :param start_from: The checkpoint training starts from (``{"checkpoint", "path"}``),
        None for the base model (:func:`starting_point`).
    :param mix: The sources of a mix, in order (empty: the rows of ``select``); ``train``
        is then all their rows together.
    :param mix_strategy: When the mix ends (``datasets.interleave_datasets``).
    """

    model: str
    objective: str
    columns: t.Tuple[str, ...]
    train: RowSet
    evals: t.Tuple[RowSet, ...]
    fingerprint: t.Dict[str, t.Any]
    run_settings: t.Dict[str, t.Any]
    config_kwargs: t.Dict[str, t.Any]
    best_metric: t.Optional[str]
    greater_is_better: bool
    config: t.Any = dc.field(compare=False, repr=False, default=None)
    settings: t.Optional[TrainSettings] = dc.field(compare=False, repr=False, default=None)
    rows: t.Mapping[str, t.Any] = dc.field(compare=False, repr=False, default_factory=dict)
    start_from: t.Optional[t.Dict[str, str]] = None
    mix: t.Tuple[MixPart, ...] = ()
    mix_strategy: t.Optional[str] = None

    @property
    def output_dir(self) -> str:
        """The HF trainer's output folder."""
        return self.config_kwargs["output_dir"]

    @property
    def eval_sets(self) -> t.List[str]:
        """Names of the eval sets, in order."""
        return [s.name for s in self.evals]

    def to_json(self) -> PlanJSON:
        """The plan as JSON for the fit job's row (see :class:`PlanJSON`)."""
        out = PlanJSON(
            version=PLAN_VERSION,
            **{
                f.name: _plain(getattr(self, f.name))
                for f in dc.fields(self)
                if f.name not in ("config", "settings", "rows")
            },
        )
        out.plan = self
        return out


class PlanJSON(dict):
    """A plan's JSON, as the fit job's keyword ``plan`` (superduper stores it in the ``Job``
    row). In the process that planned, :attr:`plan` carries the built plan with it."""

    plan: t.Optional[TrainingPlan] = None


def _plain(value):
    def default(o):
        return dc.asdict(o) if dc.is_dataclass(o) else repr(o)

    return json.loads(json.dumps(value, default=default))


def from_job(value: t.Any, model: t.Any, db: Datalayer) -> t.Optional[TrainingPlan]:
    """The plan handed to ``fit_in_db`` (None: none, or one of another plan version).

    In the process that planned it, the built plan itself; from a job row, rebuilt from
    its JSON: the trl config constructed from the resolved keywords, the rows as pages of
    the same query with the counts and hashes recorded (not read again).
    """
    if isinstance(value, PlanJSON) and value.plan is not None:
        return value.plan
    if not isinstance(value, dict) or value.get("version") != PLAN_VERSION:
        return None
    trainer = model.trainer
    train = RowSet(**value["train"])
    evals = tuple(RowSet(**e) for e in value["evals"])
    config = cfg.make_config(value["objective"], value["config_kwargs"], _one_gpu(trainer))
    rows = _fold_sets(trainer, db, value["columns"], {s.name for s in evals})
    mix = tuple(MixPart(**m) for m in value.get("mix") or ())
    for part, count in zip(getattr(rows["train"], "parts", ()), (m.count for m in mix)):
        part.known_count(count)
    if model.validation is not None:
        rows.update(_dataset_rows(model, db, objectives.get(value["objective"]), value["columns"]))
    for s in (train, *evals):
        if hasattr(rows.get(s.name), "known_count"):
            rows[s.name].known_count(s.count)
    return TrainingPlan(
        model=value["model"],
        objective=value["objective"],
        columns=tuple(value["columns"]),
        train=train,
        evals=evals,
        fingerprint=value["fingerprint"],
        run_settings=value["run_settings"],
        config_kwargs=value["config_kwargs"],
        best_metric=value["best_metric"],
        greater_is_better=value["greater_is_better"],
        config=config,
        settings=TrainSettings.from_trainer(trainer, config),
        rows=rows,
        start_from=value.get("start_from"),
        mix=mix,
        mix_strategy=value.get("mix_strategy"),
    )


# -- building the plan --------------------------------------------------------
def build_plan(model: t.Any, db: Datalayer, train_rows=None, eval_rows=None) -> TrainingPlan:
    """Check and decide everything about a training of ``model``; write nothing.

    :param model: The ``LLM`` with its ``LLMTrainer``.
    :param db: The datalayer.
    :param train_rows: The training rows when the caller has them (``fit`` called with
        superduper's lists); None reads the trainer's ``select`` (``_fold='train'``).
    :param eval_rows: The evaluation rows by set name, likewise.
    :raises ValueError: naming the field or key, the value and the fix.
    """
    trainer = model.trainer
    objective = objectives.get(getattr(trainer, "objective", None))
    check_model_path(model.model_name_or_path)
    check_devices(trainer.ray_configs, trainer.num_gpus)
    _check_lora_modules(trainer, model)
    columns = objective.columns(trainer.key)
    if train_rows is None:
        if trainer.select is None and not trainer.mix:
            raise data.DataError("LLMTrainer needs a `select` query returning the training rows.")
        sets = _fold_sets(trainer, db, columns, {"valid"})
        _refuse_empty(trainer, db, sets["train"], columns)
        if not sets["valid"]:
            del sets["valid"]
    else:
        sets = {
            "train": train_rows,
            **({"valid": eval_rows.pop("valid")} if "valid" in (eval_rows or {}) else {}),
        }
    if model.validation is not None:
        sets.update(_dataset_rows(model, db, objective, columns))
    for name, rows in (eval_rows or {}).items():
        sets.setdefault(name, rows)
    # One read of every set, page by page: checked, counted and hashed; nothing is held.
    sources = mix_sources(trainer)
    mixed = isinstance(sets["train"], store_rows.ChainedRows)
    hashes = {
        name: scan(objective, rows, columns, name)
        for name, rows in sets.items()
        if name != "train" or not mixed
    }
    mix = ()
    if mixed:
        parts = sets["train"].parts
        part_hashes = [
            scan(objective, rows, columns, "train", f"training rows of `mix[{i}]` ({s.label})")
            for i, (s, rows) in enumerate(zip(sources, parts))
        ]
        for rows, digest in zip(parts, part_hashes):
            rows.known_count(digest.count)
        hashes["train"] = lineage.RowsHash.combine(part_hashes)
        mix = tuple(MixPart(s.label, h.count, h.hexdigest(), s.weight) for s, h in zip(sources, part_hashes))
    for name, rows in sets.items():
        if hasattr(rows, "known_count"):
            rows.known_count(hashes[name].count)
    eval_names = [n for n in sets if n != "train"]
    start = starting_point(model, db)
    fingerprint = lineage.DataFingerprint.of_hashes(
        store_mix.describe(sources, trainer.mix_strategy) if mixed else str(trainer.select),
        hashes["train"],
        {n: hashes[n] for n in eval_names},
        trainer.max_seq_length,
        model.prompt_template,
        trainer.setup_chat_format,
        sources=[_source_lineage(p, share) for p, share in zip(mix, store_mix.probabilities(sources))]
        if mixed
        else None,
    )
    if start is not None:  # lineage: each checkpoint names the one its run started from
        fingerprint["start_checkpoint"] = start["checkpoint"]
    settings_json = run_settings(model, trainer, start)
    # A refused resume fails here, before the apply writes anything.
    resume.refuse_changed_data(
        db, model.identifier, settings_json, fingerprint, trainer.resume_from_db, trainer.on_data_change
    )
    kwargs = _config_kwargs(trainer, model.identifier, eval_names, hashes["train"].count)
    config = cfg.make_config(objective.name, kwargs, _one_gpu(trainer))
    settings = TrainSettings.from_trainer(trainer, config)
    precision = precision_of(config)
    logging.info(f"Precision: {precision.name} on {precision.device} ({settings.precision.reason})")
    metric, greater = best_metric(config.metric_for_best_model, config.greater_is_better)
    if mixed:  # the order of the mixed rows follows from the weights and this seed
        fingerprint["mix"] = {"strategy": trainer.mix_strategy, "seed": config.seed}
    _check_optional(trainer, db)
    # What trl would only find at its first step (GRPO: call the reward functions once).
    objective.preflight(sets["train"], columns, settings, tokenization_of(model, trainer))
    return TrainingPlan(
        model=model.identifier,
        objective=objective.name,
        columns=tuple(columns),
        train=_rowset("train", hashes["train"]),
        evals=tuple(_rowset(n, hashes[n]) for n in eval_names),
        fingerprint=fingerprint,
        run_settings=settings_json,
        config_kwargs=kwargs,
        best_metric=metric,
        greater_is_better=greater,
        config=config,
        settings=settings,
        rows=sets,
        start_from=start,
        mix=mix,
        mix_strategy=trainer.mix_strategy if mixed else None,
    )


def scan(objective, rows, columns: t.Sequence[str], name: str, where: t.Optional[str] = None):
    """Read ``rows`` once, page by page: check each page with the objective's rules and
    hash it (eval rows with their set's name); return the ``lineage.RowsHash``.

    :param where: The rows as error messages name them (default: from ``name``).
    """
    if where is None:
        where = "training rows" if name == "train" else f"evaluation rows '{name}'"
        if name == "valid":
            where = "validation rows (`_fold='valid'`)"
    digest = lineage.RowsHash()
    prefix = {} if name == "train" else {"_set": name}
    for page in data.pages(rows):
        objective.check_rows(page, columns, where, start=digest.count)
        digest.update({**prefix, **{k: r[k] for k in columns}} for r in page)
    if not digest.count:
        objective.check_rows([], columns, where)  # raises: no rows
    return digest


def tokenization_of(model, trainer) -> t.Dict[str, t.Any]:
    """How rows become the model's text: the objectives' ``tokenization`` keywords."""
    return dict(
        max_length=trainer.max_seq_length,
        prompt_template=model.prompt_template,
        chat_format=trainer.setup_chat_format,
    )


def _rowset(name: str, digest) -> RowSet:
    return RowSet(name, digest.count, digest.hexdigest())


def _source_lineage(part: MixPart, share: float) -> t.Dict[str, t.Any]:
    """One source of a mix in the data fingerprint."""
    return {
        "query": part.name,
        "weight": part.weight,
        "share": round(share, 6),
        "train_rows": part.count,
        "train_sha256": part.sha256,
    }


def mix_sources(trainer: t.Any) -> t.List[store_mix.MixSource]:
    """The sources of the trainer's ``mix`` (validated when the trainer was built); empty
    without one."""
    sources, _ = store_mix.parse_mix(getattr(trainer, "mix", None), getattr(trainer, "mix_strategy", None))
    return sources


def _one_gpu(trainer) -> bool:
    return trainer.num_gpus == 1 and trainer.ray_configs is None


def _fold_sets(trainer, db: Datalayer, columns, evals) -> t.Dict[str, t.Any]:
    """``train`` and (when asked) ``valid``: the folds of the trainer's ``select``, in pages."""
    out = {"train": fold_rows(trainer, db, "train", columns)}
    if "valid" in evals:
        out["valid"] = fold_rows(trainer, db, "valid", columns)
    return out


def _refuse_empty(trainer, db: Datalayer, train, columns) -> None:
    if isinstance(train, store_rows.ChainedRows):
        for i, (source, part) in enumerate(zip(mix_sources(trainer), train.parts)):
            if not part:
                raise data.DataError(
                    f"`mix[{i}]` ({source.label}) has no rows with `_fold='train'`: a source of the "
                    "mix needs training rows. Insert them, or remove the entry from `mix`."
                )
        return
    if train:
        return
    total = len(fold_rows(trainer, db, None, columns))
    hint = (
        f" The query returns {total} rows, but none with `_fold='train'`: set `_fold` "
        "on the rows ('train' or 'valid')."
        if total
        else ""
    )
    raise data.DataError(
        f"The training rows are empty: `select` ({trainer.select}) returned no rows with "
        f"`_fold='train'`.{hint} Insert training rows before applying the model."
    )


def _dataset_rows(model, db: Datalayer, objective, columns) -> t.Dict[str, t.List]:
    """The rows of each dataset of the model's ``validation``, under its identifier."""
    out = {}
    for ds in model.validation.datasets:
        ds.db = ds.db or db
        rows = [dict(r) for r in ds.data]
        objective.check_rows(rows, columns, f"rows of validation dataset '{ds.identifier}'")
        out[ds.identifier] = [{k: r[k] for k in columns} for r in rows]
    return out


def _config_kwargs(trainer, identifier: str, eval_sets: t.Sequence[str], train_count: int):
    """The trl config's keywords: the trainer's, the best metric, and Ray's ``max_steps``."""
    produced = eval_metric_names(eval_sets, objectives.get(trainer.objective).eval_metrics)
    overrides = {}
    metric = trainer.training_kwargs.get("metric_for_best_model")
    if metric is None and produced:
        overrides["metric_for_best_model"] = produced[0]
    elif metric is not None:
        bare = metric[len("eval_") :] if metric.startswith("eval_") else metric
        if bare not in produced:
            where = (
                f"the eval sets {list(eval_sets)} produce {produced}"
                if produced
                else "there is no evaluation data"
            )
            raise cfg.ConfigError(
                f"`metric_for_best_model`={metric!r} is a metric no evaluation produces: {where}. "
                f"Use one of {produced or ['(none: add rows with `_fold=' + repr('valid') + '`)']}."
            )
    output_dir = cfg.output_dir_for(trainer, identifier)
    kwargs = cfg.config_kwargs(trainer, output_dir=output_dir, has_eval=bool(eval_sets), **overrides)
    if trainer.ray_configs is not None:
        kwargs = ray_max_steps(kwargs, train_count, trainer.ray_configs)
    return kwargs


def ray_max_steps(kwargs: t.Dict[str, t.Any], rows: int, ray_configs: t.Mapping) -> t.Dict[str, t.Any]:
    """``max_steps`` set when it is not: a Ray worker's shard is an iterable of unknown
    length, so the HF trainer needs the number of steps.

    :param kwargs: The trl config's keywords.
    :param rows: Training rows in all.
    :param ray_configs: The trainer's ``ray_configs`` (its ``scaling_config`` workers).
    """
    import math

    if (kwargs.get("max_steps") or -1) > 0:
        return kwargs
    scaling = ray_configs["scaling_config"]
    workers = (scaling.get("num_workers") if isinstance(scaling, dict) else scaling.num_workers) or 1
    per_step = (
        workers * kwargs.get("per_device_train_batch_size", 8) * kwargs.get("gradient_accumulation_steps", 1)
    )
    steps = math.ceil(rows / per_step) * math.ceil(kwargs.get("num_train_epochs", 3.0))
    return {**kwargs, "max_steps": max(steps, 1)}


def _check_lora_modules(trainer, model) -> None:
    """LoRA target and saved modules named by the user exist in the model (a typo would
    fail only once training loads the weights, after the apply wrote the model)."""
    if not trainer.use_lora:
        return
    fields = {
        "lora_target_modules": trainer.lora_target_modules,
        "lora_modules_to_save": trainer.lora_modules_to_save,
    }
    issues = []
    for field, value in fields.items():
        if not value or isinstance(value, str):  # "all-linear", a regex, or none
            continue
        from superduper_transformers.hf.lora import unmatched_modules

        missing, known = unmatched_modules(model.model_load_kwargs(), list(value))
        if missing:
            issues.append(
                f"`{field}` names {missing}, which match no module of {model.model_name_or_path}: "
                f"its modules are named {known}. Fix the names, or use `lora_target_modules='all-linear'`."
            )
    if issues:
        raise cfg.ConfigError("Invalid LLMTrainer settings:\n" + "\n".join(f"- {i}" for i in issues))


def _check_optional(trainer, db: Datalayer) -> None:
    """Optional packages and the Ray set-up the settings need."""
    if trainer.bits is not None:
        from superduper_transformers._optional import require

        require("bitsandbytes", "quant", f"`bits={trainer.bits}` (QLoRA)")
    if trainer.ray_configs is not None:
        from superduper_transformers.launch.ray_settings import check_ray_setup

        check_ray_setup(trainer.ray_configs, db)  # settings, shared storage, cluster address


# -- derived values, each in one place ------------------------------------------
def eval_metric_names(eval_sets: t.Sequence[str], metrics: t.Sequence[str] = ("loss",)) -> t.List[str]:
    """The metrics evaluation produces for these eval sets (without the ``eval_`` prefix).

    One set of ``_fold='valid'`` rows gives ``loss`` (and the objective's other
    ``metrics``: DPO's ``rewards/accuracies``...); several sets (or a named validation
    dataset) give ``<set>_loss`` (``<set>_rewards/accuracies``...) each. The first is the
    default best metric.
    """
    if not eval_sets:
        return []
    if list(eval_sets) == ["valid"]:
        return list(metrics)
    return [f"{name}_{m}" for name in eval_sets for m in metrics]


#: The trainer's own fields that shape a training (with its training keywords).
RUN_FIELDS = (
    "use_lora",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "lora_bias",
    "lora_modules_to_save",
    "bits",
    "max_seq_length",
    "setup_chat_format",
    "callbacks",
    "early_stopping_patience",
    "early_stopping_threshold",
    "record_generations",
    "reward_funcs",
)


def run_settings(model: t.Any, trainer: t.Any, start: t.Optional[t.Mapping] = None) -> t.Dict[str, t.Any]:
    """The settings that shape a training, as JSON (compared before resuming).

    :param model: The ``LLM``.
    :param trainer: Its ``LLMTrainer``.
    :param start: The checkpoint training starts from (:func:`starting_point`), if any.
    """
    settings = dict(trainer.training_kwargs or {})
    for name in RUN_FIELDS:
        settings[name] = getattr(trainer, name)
    objective = getattr(trainer, "objective", None) or "sft"
    if objective != "sft":  # absent for SFT: runs recorded before objectives still resume
        settings["objective"] = objective
    if start is not None:  # likewise absent when training starts from the base model
        settings["start_from"] = start["checkpoint"]
    settings.update(
        key=trainer.key,
        model_name_or_path=model.model_name_or_path,
        prompt_template=model.prompt_template,
    )
    kept = {k: v for k, v in settings.items() if k not in resume.CHANGES_THAT_RESUME}
    return json.loads(json.dumps(kept, default=repr, sort_keys=True))


def starting_point(model: t.Any, db: Datalayer) -> t.Optional[t.Dict[str, str]]:
    """The checkpoint a training of ``model`` starts from: ``{"checkpoint", "path"}``, or
    None for the base model.

    ``LLMTrainer.start_from``: ``"base"``; ``"current"`` (the checkpoint the model uses:
    the ``adapter_id`` of the ``LLM`` applied, else of the stored one); or a checkpoint,
    alias or step of the model. Unset: ``"current"`` for the preference objectives (the
    usual path is SFT first, then preferences), ``"base"`` for SFT. When the checkpoint in
    use belongs to the model's interrupted run, the start is that run's own start (it
    resumes as it began).

    :raises ValueError: an unknown name, or a full fine-tune from a LoRA adapter.
    """
    trainer = model.trainer
    objective = getattr(trainer, "objective", None) or "sft"
    choice = getattr(trainer, "start_from", None) or ("base" if objective == "sft" else "current")
    if choice == "base":
        return None
    if choice == "current":
        ckpt = model.adapter_id
        if ckpt is None and model.identifier in db.show("LLM"):
            ckpt = db.load("LLM", model.identifier).adapter_id
        if ckpt is None:
            return None
        for run in resume.unfinished_runs(db, model.identifier):
            if run.experiment_id == getattr(ckpt, "experiment_id", None):
                start = run.settings.get("start_from")
                return None if start is None else _start(db, start, trainer)
        if not isinstance(ckpt, Checkpoint) and hasattr(ckpt, "unpack"):
            ckpt = ckpt.unpack()
        return _start(db, ckpt, trainer)
    try:
        name = promote.find_checkpoint(db, model.identifier, choice)
    except promote.PromotionError as e:
        raise cfg.ConfigError(
            f"`start_from`={choice!r}: {e} Or use 'base' (the base model) or 'current' (the "
            "checkpoint the model uses)."
        ) from e
    return _start(db, name, trainer)


def _start(db: Datalayer, ckpt: t.Union[str, Checkpoint], trainer: t.Any) -> t.Dict[str, str]:
    """``{"checkpoint", "path"}`` of a checkpoint (by name or object), its files verified."""
    from superduper_transformers.hf.loading import is_adapter_dir

    if isinstance(ckpt, str):
        ckpt = checkpoint.load_checkpoint(db, ckpt)
    path = ckpt.local_path
    if is_adapter_dir(path) and not trainer.use_lora:
        raise cfg.ConfigError(
            f"Training starts from checkpoint `{ckpt.identifier}`, a LoRA adapter, and "
            "`use_lora=False` asks for a full fine-tune: the reference model of a preference "
            "objective would then not be that starting point. Set `use_lora=True` (the adapter "
            "goes on training), or `start_from='base'`."
        )
    return {"checkpoint": ckpt.identifier, "path": path}


def fold_rows(trainer: t.Any, db: Datalayer, fold: t.Optional[str], columns=None):
    """The rows of ``fold`` of the trainer's ``select``, read in pages (see ``store.rows``).

    :raises DataError: when the query's table is not in the database.
    """
    if columns is None:
        columns = objectives.get(getattr(trainer, "objective", None)).columns(trainer.key)
    try:
        sources = mix_sources(trainer)
        if sources:  # the mix's sources, one after the other (mixed when tokenized)
            return store_rows.ChainedRows(
                [store_rows.fold_rows(db, s.select(db), fold, list(columns)) for s in sources]
            )
        return store_rows.fold_rows(db, trainer.select, fold, list(columns))
    except store_rows.MissingTableError as e:
        raise data.DataError(str(e)) from e
