"""``LLMTrainer``: the superduper trainer component of this plugin.

It holds settings only (composition, not inheritance from ``TrainingArguments``):
its own fields for LoRA, quantization, Ray and db logging, and every keyword of
transformers' ``TrainingArguments`` / trl's ``SFTConfig`` collected into
``training_kwargs``. ``fit`` reads like a recipe: rows -> datasets -> ``train``.
"""

from __future__ import annotations

import dataclasses as dc
import inspect
import json
import typing as t
import weakref

from superduper import logging
from superduper.components.model import Trainer

from superduper_transformers import evaluation, lineage, resume
from superduper_transformers import trainer_args as cfg
from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.hf import data
from superduper_transformers.hf.callbacks import CallbackError, normalise_callbacks
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.hf.loading import check_model_path, load_tokenizer
from superduper_transformers.launch.dispatch import check_devices, launch
from superduper_transformers.launch.ray_data import ray_row_source, with_max_steps
from superduper_transformers.launch.ray_settings import RayConfigError, plain_ray_configs
from superduper_transformers.settings import TrainSettings
from superduper_transformers.store import rows as store_rows
from superduper_transformers.store.datalayer import migrate_component_tables
from superduper_transformers.store.rows import FoldRows

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: The ``LLM`` component (typed loosely: model.py imports this module).
LLM = t.Any


class _LLMTrainerFields(Trainer):
    """The stored fields of :class:`LLMTrainer` (see there)."""

    use_lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: t.Union[str, t.List[str]] = "all-linear"
    lora_bias: str = "none"
    lora_modules_to_save: t.Optional[t.List[str]] = None
    bits: t.Optional[int] = None
    max_seq_length: int = 512
    setup_chat_format: bool = False
    log_to_db: bool = True
    training_kwargs: t.Dict = dc.field(default_factory=dict)
    num_gpus: t.Optional[int] = None
    ray_configs: t.Optional[t.Dict] = None
    resume_from_db: str = "auto"
    on_data_change: str = "warn"
    callbacks: t.Optional[t.List] = None
    early_stopping_patience: t.Optional[int] = None
    early_stopping_threshold: t.Optional[float] = None
    record_generations: t.Optional[int] = None


class LLMTrainer(_LLMTrainerFields):
    """Fine-tune an ``LLM`` with transformers + trl + peft on rows selected from the db.

    Any keyword of transformers' ``TrainingArguments`` / trl's ``SFTConfig``
    (``learning_rate``, ``max_steps``, ``save_steps``, ``eval_strategy``,
    ``save_total_limit``, ``metric_for_best_model``, ...) may be passed directly; it is
    stored in ``training_kwargs``. An unknown keyword is an error.

    :param use_lora: Train a LoRA adapter (True) or all weights (False).
    :param lora_r: LoRA rank.
    :param lora_alpha: LoRA scaling numerator.
    :param lora_dropout: Dropout on the LoRA branch.
    :param lora_target_modules: Modules to adapt (``"all-linear"`` or a list of names).
    :param lora_bias: Which biases to train: ``"none"``, ``"all"`` or ``"lora_only"``.
    :param lora_modules_to_save: Modules trained and saved in full beside the adapter
        (e.g. ``["lm_head"]``).
    :param bits: Load the base model quantized to 4 (QLoRA NF4) or 8 bits; None for no quantization.
    :param max_seq_length: Maximum tokens per example (trl's ``max_length``).
    :param setup_chat_format: Format examples with the tokenizer's chat template
        (user: X, assistant: y), adding a ChatML template when the tokenizer has none.
    :param log_to_db: Register every checkpoint and eval metric in the db during training.
    :param training_kwargs: ``TrainingArguments``/``SFTConfig`` keywords.
    :param num_gpus: GPUs to use locally; must be set explicitly when several are visible.
    :param ray_configs: Train on Ray: ``scaling_config`` (required), ``run_config``, ``address``.
        Stored as JSON: Ray's config dataclasses become dicts of their set fields (rebuilt
        on use); values that are not plain data are refused.
    :param resume_from_db: ``"auto"`` resumes an interrupted run from its latest
        checkpoint in the db; ``"never"`` always starts fresh.
    :param on_data_change: When the rows of an interrupted run changed before it resumes
        (its ``data_fingerprint`` differs): ``"warn"`` resumes and logs what changed,
        ``"refuse"`` raises before anything is written, ``"restart"`` abandons the run
        and starts a fresh one.
    :param callbacks: The user's transformers ``TrainerCallback``s, stored as JSON and built
        where training runs (this process, every Ray worker): each an import path
        ``"package.module:ClassName"``, a dict ``{"class": "package.module:ClassName",
        "kwargs": {...}}`` with JSON keyword arguments, or an importable class. Instances
        are refused: nothing of a trainer is pickled.
    :param early_stopping_patience: Stop training after this many evaluations without
        improvement of ``metric_for_best_model`` (transformers' ``EarlyStoppingCallback``);
        None trains to ``max_steps``. Needs evaluation data.
    :param early_stopping_threshold: How much ``metric_for_best_model`` must improve to count
        as an improvement (default 0.0).
    :param record_generations: At each evaluation, generate (greedy) for this many prompts of
        the first eval set and record the prompt/generation/target triples on the model
        (``metric_values['generations']``); None or 0 records none.
    """

    def __init__(self, identifier: str, *args, **kwargs):
        """Take ``TrainingArguments``/``SFTConfig`` keywords directly (into ``training_kwargs``).

        The generated dataclass ``__init__`` (of :class:`_LLMTrainerFields`) knows only
        the component's fields; anything else that is a training keyword is moved into
        ``training_kwargs``, and an unknown keyword is refused with the closest names.
        """
        own_kwargs, training = cfg.split_unknown_kwargs(kwargs, _OWN_FIELDS)
        if training:
            own_kwargs["training_kwargs"] = {**(own_kwargs.get("training_kwargs") or {}), **training}
        super().__init__(identifier, *args, **own_kwargs)

    def postinit(self):
        """Validate every setting at construction, before anything reaches the db."""
        self.training_kwargs = dict(self.training_kwargs or {})
        if self.on_data_change is None:
            # A trainer stored before the field existed: `migrate_component_tables` added
            # the column, NULL in its row. It behaves as it did then (warn and resume).
            self.on_data_change = "warn"
        try:
            self.callbacks = normalise_callbacks(self.callbacks)
        except CallbackError as e:
            raise cfg.ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
        try:
            self.ray_configs = plain_ray_configs(self.ray_configs)
        except RayConfigError as e:
            raise cfg.ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
        cfg.validate_trainer(self)
        super().postinit()

    def create_jobs(self, context, event_type, ids=None, jobs=(), requires=None):
        """Bring the component tables up to date before the apply writes this trainer.

        Also here (not only in ``LLM.create_jobs``): a changed trainer under an unchanged
        ``LLM`` is written without the model's plan running.
        """
        migrate_tables(self.db)
        return super().create_jobs(
            context=context, event_type=event_type, ids=ids, jobs=jobs, requires=requires
        )

    def fit(
        self,
        model: LLM,
        db: Datalayer,
        train_dataset: t.List,
        valid_dataset: t.List,
    ):
        """Fine-tune ``model`` on the selected rows and record the run in ``db``.

        :param model: The ``LLM`` to train.
        :param db: The datalayer.
        :param train_dataset: Training values mapped by ``key`` (``_fold == 'train'``), as
            superduper's lists, or the rows read in pages (``store.rows.FoldRows``: what
            ``LLM`` hands in, so that no table is held in memory).
        :param valid_dataset: Validation values mapped by ``key`` (``_fold == 'valid'``),
            likewise.
        """
        X, y = cfg.input_output_keys(self.key)
        train_rows = as_rows(train_dataset, X, y)
        eval_rows = named_eval_rows(model, db, valid_dataset, X, y)
        # One read of every set, page by page: checked, counted and hashed (fingerprint
        # and tokenization cache key); no set is held in memory.
        train_hash = data.scan_rows(train_rows, X, y, "training rows")
        eval_hashes = {
            name: data.scan_rows(rows, X, y, f"evaluation rows '{name}'", set_name=name)
            for name, rows in eval_rows.items()
        }

        check_model_path(model.model_name_or_path)
        tokenizer = load_tokenizer(model.tokenizer_load_kwargs())
        tokenization = dict(
            X=X,
            y=y,
            max_length=self.max_seq_length,
            prompt_template=model.prompt_template,
            chat_format=self.setup_chat_format,
        )

        def build(rows, digest):
            key = data.tokenization_key(tokenizer, f"{digest.count}:{digest.hexdigest()}", **tokenization)
            return data.build_dataset(tokenizer, rows, fingerprint=key, **tokenization)

        if self.ray_configs is not None:
            # Read and tokenized on the cluster (Ray Data), never on this process.
            train_ds = ray_row_source(
                db, self.select, train_rows, model.tokenizer_load_kwargs(), tokenization
            )
        else:
            train_ds = build(train_rows, train_hash)
        eval_ds = {name: build(rows, eval_hashes[name]) for name, rows in eval_rows.items()}
        if list(eval_ds) == ["valid"]:
            eval_ds = eval_ds["valid"]  # one set: metrics are plain `eval_loss`

        training_args = training_args_for(self, model.identifier, list(eval_rows))
        settings = TrainSettings.from_trainer(self, training_args)
        if self.ray_configs is not None:
            training_args = with_max_steps(training_args, train_hash.count, self.ray_configs)
        fingerprint = lineage.DataFingerprint.of_hashes(
            str(self.select),
            train_hash,
            eval_hashes,
            self.max_seq_length,
            model.prompt_template,
            self.setup_chat_format,
        )
        with resume.active(model.identifier):
            # Resume the model's interrupted run (same experiment_id) or record a new one.
            plan = resume.start_run(
                db,
                model,
                run_settings(model, self),
                training_args.output_dir,
                self.resume_from_db,
                data_fingerprint=fingerprint,
                on_data_change=self.on_data_change,
            )
            logging.info(
                f"Training {model.identifier} (run {plan.experiment_id}, from step {plan.step}): "
                f"{train_hash.count} rows, eval sets {list(eval_rows)}, lora={self.use_lora}, "
                f"bits={self.bits}, precision={settings.precision.name}, "
                f"output_dir={training_args.output_dir}"
            )
            job = TrainJob(
                training_args,
                train_ds,
                eval_ds or None,
                model.model_load_kwargs(),
                model.tokenizer_load_kwargs(),
                settings=settings,
                experiment_id=plan.experiment_id,
                resume_from_checkpoint=plan.resume_from_checkpoint,
                data_fingerprint=fingerprint,
                generation_samples=evaluation.generation_samples(
                    self.record_generations,
                    eval_rows,
                    X,
                    y,
                    tokenizer,
                    model.prompt_template,
                    self.setup_chat_format,
                ),
            )
            check_devices(self.ray_configs, self.num_gpus)
            result = launch(job, db=db, llm=model, ray_configs=self.ray_configs)
            try:  # the Validation's Metrics, on generations; a failing Metric leaves the run finished
                evaluation.validate_after_training(model, db)
            finally:
                resume.finish_run(db, model.identifier, plan.experiment_id)
        # The job stores fit's return value as JSON: of a ray.train.Result, its metrics.
        return result.metrics if self.ray_configs is not None else result


def migrate_tables(db: Datalayer, *classes: type) -> t.Dict[str, t.List[str]]:
    """Add the fields this package's components gained to ``db``'s existing SQL tables.

    Called while an apply is planned, before superduper writes anything: every process
    that records models, trainers, runs or checkpoints applies an ``LLM`` or its trainer
    first (Ray workers only after their driver did). See
    :func:`superduper_transformers.store.datalayer.migrate_component_tables`.

    :param db: The datalayer.
    :param classes: Further component classes (``LLM``: this module may not import it).
    :return: ``{table: [fields added]}``; empty when nothing was missing.
    """
    classes = (*classes, LLMTrainer, Checkpoint, resume.TrainingRun)
    checked = _MIGRATED.setdefault(db, set())
    todo = [c for c in classes if c.__name__ not in checked]
    if not todo:
        return {}  # every checkpoint saves the model (an apply): check each datalayer once
    added = migrate_component_tables(db, todo)
    # Fields never vanish again, and a table created later gets every field from superduper.
    checked.update(c.__name__ for c in todo)
    return added


#: Datalayer -> names of the classes whose tables ``migrate_tables`` found complete in it.
_MIGRATED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def run_settings(model: LLM, trainer: LLMTrainer) -> t.Dict[str, t.Any]:
    """The settings that shape a training, as JSON (compared before resuming).

    :param model: The ``LLM``.
    :param trainer: Its ``LLMTrainer``.
    """
    settings = dict(trainer.training_kwargs or {})
    for name in (
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
    ):
        settings[name] = getattr(trainer, name)
    settings.update(
        key=trainer.key,
        model_name_or_path=model.model_name_or_path,
        prompt_template=model.prompt_template,
    )
    kept = {k: v for k, v in settings.items() if k not in resume.CHANGES_THAT_RESUME}
    return json.loads(json.dumps(kept, default=repr, sort_keys=True))


def data_fingerprint(
    model: LLM, trainer: LLMTrainer, train_rows: t.Sequence[t.Mapping], eval_rows: t.Mapping[str, t.Sequence]
) -> t.Dict[str, t.Any]:
    """The fingerprint of the data of a training of ``model`` (see :mod:`..lineage`).

    :param model: The ``LLM``.
    :param trainer: Its ``LLMTrainer``.
    :param train_rows: The training rows, keyed by the ``key`` columns.
    :param eval_rows: The evaluation rows by eval set (:func:`named_eval_rows`).
    """
    return lineage.data_fingerprint(
        str(trainer.select),
        train_rows,
        eval_rows,
        max_seq_length=trainer.max_seq_length,
        prompt_template=model.prompt_template,
        chat_format=trainer.setup_chat_format,
    )


def eval_metric_names(eval_sets: t.Sequence[str]) -> t.List[str]:
    """The metrics evaluation produces for these eval sets (without the ``eval_`` prefix).

    One set of ``_fold='valid'`` rows gives ``loss``; several sets (or a named
    validation dataset) give ``<set>_loss`` each.
    """
    if not eval_sets:
        return []
    return ["loss"] if list(eval_sets) == ["valid"] else [f"{name}_loss" for name in eval_sets]


def training_args_for(trainer: LLMTrainer, identifier: str, eval_sets: t.Sequence[str]):
    """The resolved ``SFTConfig`` of a training of ``identifier`` with these eval sets.

    Built in the preflight too, so that a setting transformers or trl refuses (or a
    best-model metric no evaluation produces) fails before the apply writes anything.

    :raises ConfigError: naming the setting, the value and the fix.
    """
    produced = eval_metric_names(eval_sets)
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
    try:
        return cfg.build_sft_config(
            trainer,
            output_dir=cfg.output_dir_for(trainer, identifier),
            has_eval=bool(eval_sets),
            **overrides,
        )
    except cfg.ConfigError:
        raise
    except (ValueError, TypeError) as e:  # transformers' / trl's own checks
        raise cfg.ConfigError(f"Invalid LLMTrainer settings: transformers/trl refused them: {e}") from e


def named_eval_rows(
    model: LLM, db: Datalayer, valid_values, X: str, y: t.Optional[str]
) -> t.Dict[str, t.List]:
    """Evaluation rows by name: ``valid`` (rows with ``_fold='valid'``) and each
    dataset of the model's ``validation``, under its own identifier."""
    out: t.Dict[str, t.Any] = {}
    if valid_values:
        out["valid"] = as_rows(valid_values, X, y)
    if model.validation is not None:
        for ds in model.validation.datasets:
            ds.db = ds.db or db
            rows = [dict(r) for r in ds.data]
            data.check_rows(rows, X, y, f"rows of validation dataset '{ds.identifier}'")
            out[ds.identifier] = [{k: r[k] for k in (X, y) if k is not None} for r in rows]
    return out


def as_rows(values, X: str, y: t.Optional[str]):
    """Rows keyed by column name: ``FoldRows`` (read in pages by ``LLM``) as they are,
    superduper's lists (values mapped by ``key``, the documented ``fit`` form) converted."""
    if isinstance(values, FoldRows):
        return values
    return data.rows_from_values(values, X, y)


def fold_rows(trainer: LLMTrainer, db: Datalayer, fold: t.Optional[str]) -> FoldRows:
    """The rows of ``fold`` of the trainer's ``select``, read in pages (see ``store.rows``).

    :raises DataError: when the query's table is not in the database.
    """
    X, y = cfg.input_output_keys(trainer.key)
    try:
        return store_rows.fold_rows(db, trainer.select, fold, [k for k in (X, y) if k is not None])
    except store_rows.MissingTableError as e:
        raise data.DataError(str(e)) from e


def preflight(model: LLM, db: Datalayer) -> None:
    """Check what training needs before the apply writes anything to the db.

    :param model: The ``LLM`` about to be applied with its trainer.
    :param db: The datalayer.
    :raises ValueError: naming the field or key, the value and the fix.
    """
    trainer = model.trainer
    if not isinstance(trainer, LLMTrainer):
        return
    check_model_path(model.model_name_or_path)
    check_devices(trainer.ray_configs, trainer.num_gpus)
    X, y = cfg.input_output_keys(trainer.key)
    if trainer.select is None:
        raise data.DataError("LLMTrainer needs a `select` query returning the training rows.")
    train_rows = fold_rows(trainer, db, "train")
    if not train_rows:
        total = len(fold_rows(trainer, db, None))
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
    # Read page by page: checked and hashed, never held.
    train_hash = data.scan_rows(train_rows, X, y, "training rows")
    valid_rows = fold_rows(trainer, db, "valid")
    eval_hashes = {}
    if valid_rows:
        eval_hashes["valid"] = data.scan_rows(
            valid_rows, X, y, "validation rows (`_fold='valid'`)", set_name="valid"
        )
    # `fit` (same apply, same process) takes these instead of reading every row again.
    store_rows.remember_scan(model.uuid, train_rows, train_hash)
    if valid_rows:
        store_rows.remember_scan(model.uuid, valid_rows, eval_hashes["valid"])
    if model.validation is None:
        # A refused resume fails here, before the apply writes anything. With validation
        # datasets (read only in `fit`) the same check runs at the start of `fit`.
        resume.refuse_changed_data(
            db,
            model.identifier,
            run_settings(model, trainer),
            lineage.DataFingerprint.of_hashes(
                str(trainer.select),
                train_hash,
                eval_hashes,
                trainer.max_seq_length,
                model.prompt_template,
                trainer.setup_chat_format,
            ),
            trainer.resume_from_db,
            trainer.on_data_change,
        )
    eval_sets = (["valid"] if valid_rows else []) + [
        ds.identifier for ds in (model.validation.datasets if model.validation is not None else [])
    ]
    training_args_for(trainer, model.identifier, eval_sets)
    if trainer.bits is not None:
        from superduper_transformers._optional import require

        require("bitsandbytes", "quant", f"`bits={trainer.bits}` (QLoRA)")
    if trainer.ray_configs is not None:
        from superduper_transformers.launch.ray_settings import check_ray_setup

        check_ray_setup(trainer.ray_configs, db)  # settings, shared storage, cluster address


#: Keywords that are the component's own fields (the rest are training keywords).
_OWN_FIELDS = frozenset(f.name for f in dc.fields(LLMTrainer)) | {"db"}
# superduper reads a component's fields from ``inspect.signature(cls.__init__)`` when it
# rebuilds one from the db: show it the fields' signature, not ``**kwargs``.
LLMTrainer.__init__.__signature__ = inspect.signature(_LLMTrainerFields.__init__)
