"""``LLMTrainer``: the superduper trainer component of this plugin.

It holds settings only (composition, not inheritance from ``TrainingArguments``):
its own fields for LoRA, quantization, Ray and db logging, and every keyword of
transformers' ``TrainingArguments`` / trl's ``SFTConfig`` collected into
``training_kwargs``. ``fit`` reads like a recipe: rows -> datasets -> ``train``.
"""

from __future__ import annotations

import dataclasses as dc
import inspect
import typing as t

from superduper import logging
from superduper.components.model import Trainer

from superduper_transformers import evaluation, resume
from superduper_transformers import trainer_args as cfg
from superduper_transformers.checkpoint import Checkpoint
from superduper_transformers.hf import loaded, objectives
from superduper_transformers.hf.callbacks import CallbackError, normalise_callbacks
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.hf.loading import load_tokenizer
from superduper_transformers.hf.mix import interleave
from superduper_transformers.hf.rewards import RewardError, normalise_reward_funcs
from superduper_transformers.launch.dispatch import launch
from superduper_transformers.launch.ray_data import ray_row_source
from superduper_transformers.launch.ray_settings import RayConfigError, plain_ray_configs
from superduper_transformers.plan import (  # noqa: F401
    RUN_FIELDS,
    TrainingPlan,
    build_plan,
    fold_rows,
    run_settings,
    tokenization_of,
)
from superduper_transformers.store import artifacts
from superduper_transformers.store import mix as store_mix
from superduper_transformers.store.datalayer import migrate_component_tables
from superduper_transformers.store.rows import FoldRows
from superduper_transformers.store.versions import breaking_uuid

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: The ``LLM`` component (typed loosely: model.py imports this module).
LLM = t.Any


class _LLMTrainerFields(Trainer):
    """The stored fields of :class:`LLMTrainer` (see there)."""

    objective: str = "sft"
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
    reward_funcs: t.Optional[t.List] = None
    start_from: t.Optional[str] = None
    mix: t.Optional[t.List[t.Dict]] = None
    mix_strategy: str = "first_exhausted"


class LLMTrainer(_LLMTrainerFields):
    """Fine-tune an ``LLM`` with transformers + trl + peft on rows selected from the db.

    Any keyword of transformers' ``TrainingArguments`` / trl's ``SFTConfig``
    (``learning_rate``, ``max_steps``, ``save_steps``, ``eval_strategy``,
    ``save_total_limit``, ``metric_for_best_model``, ...) may be passed directly; it is
    stored in ``training_kwargs``. An unknown keyword is an error.

    :param objective: What training optimises, and so the rows it reads (see
        docs/objectives.md): ``"sft"`` (supervised: ``key`` is a text column or an (X, y)
        pair), ``"dpo"`` or ``"orpo"`` (preferences: ``key`` names the prompt, chosen and
        rejected columns), ``"kto"`` (thumbs: prompt, completion and a boolean label) or
        ``"grpo"`` (rewards: the prompt column, then columns for the reward functions).
        Training keywords are those of the objective's trl config (``SFTConfig``,
        ``DPOConfig``, ``KTOConfig``, ``ORPOConfig``, ``GRPOConfig``).
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
    :param reward_funcs: GRPO's reward functions, stored as JSON and imported where training
        runs: each an import path ``"package.module:function"``, a dict ``{"function":
        "package.module:function", "kwargs": {...}}`` with JSON keyword arguments, or an
        importable function. trl calls each with ``prompts``, ``completions`` and the other
        columns of ``key`` as keyword arguments; it returns one number per completion.
    :param start_from: Where training starts: ``"base"`` (the base model), ``"current"``
        (the checkpoint the model uses; with LoRA its adapter goes on training, and the
        reference model of DPO/KTO is that checkpoint), or a checkpoint identifier, alias
        or step of the model. None: ``"current"`` for ``dpo``/``kto``/``orpo``/``grpo``,
        ``"base"`` for ``sft``.
    :param mix: Train on several selections mixed with weights instead of ``select``:
        ``[{"select": db["domain"].select(), "weight": 0.7}, {"select": ..., "weight": 0.3}]``.
        Each source's ``_fold='train'`` rows are drawn with probability weight / sum of
        weights, in an order fixed by the training's ``seed``; the validation rows are those
        of every source. ``select`` is then the first source's. Stored as JSON (see
        docs/data.md#mixing-several-queries).
    :param mix_strategy: When the mix ends: ``"first_exhausted"`` (a source has no rows
        left), ``"all_exhausted"`` (every row drawn at least once, smaller sources repeated)
        or ``"all_exhausted_without_replacement"``.
    """

    #: A change of any of these is a new version of the trainer, so the ``LLM`` that holds
    #: it changes too and a re-apply trains (a new run, or the interrupted one resumed
    #: where only bookkeeping changed); without them superduper updates the trainer's row
    #: in place and the re-applied model trains nothing.
    breaks: t.ClassVar[t.Sequence[str]] = (
        "objective",
        "key",
        "select",
        "mix",
        "mix_strategy",
        "training_kwargs",
        *(name for name in RUN_FIELDS),
    )

    @property
    def uuid(self) -> str:
        """superduper's version key, hashing only the ``breaks`` fields (the same value, cheaper)."""
        return breaking_uuid(self)

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
        if self.objective is None:
            self.objective = "sft"  # a trainer stored before objectives existed
        if self.on_data_change is None:
            # A trainer stored before the field existed: `migrate_component_tables` added
            # the column, NULL in its row. It behaves as it did then (warn and resume).
            self.on_data_change = "warn"
        try:
            self.callbacks = normalise_callbacks(self.callbacks)
        except CallbackError as e:
            raise cfg.ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
        try:
            self.reward_funcs = normalise_reward_funcs(self.reward_funcs) or None
        except RewardError as e:
            raise cfg.ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
        try:
            self.ray_configs = plain_ray_configs(self.ray_configs)
        except RayConfigError as e:
            raise cfg.ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
        self._normalise_mix()
        cfg.validate_trainer(self)
        super().postinit()

    def use_mix(self, mix: t.List[t.Dict]) -> None:
        """Train on ``mix`` (see the ``mix`` field) instead of ``select``, checked as at
        construction (the command line builds its queries once connected).

        :param mix: ``[{"select": query, "weight": number}, ...]``.
        :raises ConfigError: naming each bad entry, the value and the fix.
        """
        self.mix, self.select = mix, None
        self._normalise_mix()

    def _normalise_mix(self) -> None:
        """``mix`` checked whole (every problem at once) and kept in its stored JSON form;
        ``select`` set to its first source when not given."""
        if self.mix_strategy is None:  # a trainer stored before mixing existed
            self.mix_strategy = "first_exhausted"
        sources, issues = store_mix.parse_mix(self.mix, self.mix_strategy)
        if self.mix is not None and self.ray_configs is not None:
            issues.append(
                "`mix` is not supported with `ray_configs` yet (Ray Data reads one query): "
                "train the mix locally, or give one `select`."
            )
        if sources and self.select is not None and str(self.select) not in {s.label for s in sources}:
            issues.append(
                f"`select` ({self.select}) and `mix` both give training rows: leave `select` unset "
                "(the first source of the mix becomes it), or add it to `mix` with a weight."
            )
        if issues:
            raise cfg.ConfigError("Invalid LLMTrainer settings:\n" + "\n".join(f"- {i}" for i in issues))
        if sources:
            first = self.mix[0]["select"]
            if self.select is None and hasattr(first, "table"):
                self.select = first
            self.mix = [s.to_json() for s in sources]

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
        plan: t.Optional[TrainingPlan] = None,
    ):
        """Fine-tune ``model`` on the selected rows and record the run in ``db``.

        :param model: The ``LLM`` to train.
        :param db: The datalayer.
        :param train_dataset: Training values mapped by ``key`` (``_fold == 'train'``), as
            superduper's lists; ignored when ``plan`` is given (it holds the rows).
        :param valid_dataset: Validation values mapped by ``key`` (``_fold == 'valid'``),
            likewise.
        :param plan: The plan of this training, built by the apply's preflight
            (:func:`superduper_transformers.plan.build_plan`); without one it is built here.
        """
        if plan is None:
            columns = objectives.get(self.objective).columns(self.key)
            evals = {"valid": as_rows(valid_dataset, columns)} if valid_dataset else {}
            plan = build_plan(model, db, as_rows(train_dataset, columns), evals)
        return run(plan, model, db)


def run(plan: TrainingPlan, model: LLM, db: Datalayer):
    """Train ``model`` as ``plan`` says: datasets, the run's record, launch, validation.

    :param plan: The training's plan.
    :param model: The ``LLM`` (a copy loaded by the fit job).
    :param db: The datalayer.
    """
    loaded.forget()  # weights kept for prediction in this process: memory the training needs
    trainer = model.trainer
    objective = objectives.get(plan.objective)
    tokenizer = load_tokenizer(model.tokenizer_load_kwargs())
    tokenization = tokenization_of(model, trainer)
    owner = artifacts.model_tag(db, model.identifier)  # `delete_model` removes its cache entries
    if trainer.ray_configs is not None and objective.tokenized():
        # Read and tokenized on the cluster (Ray Data), never on this process.
        X, y = cfg.input_output_keys(trainer.key)
        train_ds = ray_row_source(
            db,
            trainer.select,
            plan.rows["train"],
            model.tokenizer_load_kwargs(),
            dict(X=X, y=y, **tokenization),
        )
    else:
        train_ds = train_dataset(plan, tokenizer, tokenization, owner)
    eval_ds = {
        s.name: objective.build_dataset(
            tokenizer, plan.rows[s.name], plan.columns, tokenization, s.data_hash, owner
        )
        for s in plan.evals
    }
    if list(eval_ds) == ["valid"]:
        eval_ds = eval_ds["valid"]  # one set: metrics are plain `eval_loss`
    with resume.training(model):
        # Resume the model's interrupted run (same experiment_id) or record a new one.
        run_plan = resume.start_run(
            db,
            model,
            plan.run_settings,
            plan.output_dir,
            trainer.resume_from_db,
            data_fingerprint=plan.fingerprint,
            on_data_change=trainer.on_data_change,
        )
        logging.info(
            f"Training {model.identifier} (run {run_plan.experiment_id}, from step {run_plan.step}): "
            f"{plan.objective}, {plan.train.count} rows, eval sets {plan.eval_sets}, "
            f"from {(plan.start_from or {}).get('checkpoint') or 'the base model'}, "
            f"lora={trainer.use_lora}, bits={trainer.bits}, precision={plan.settings.precision.name}, "
            f"output_dir={plan.output_dir}"
        )
        X, y = plan.columns[0], plan.columns[1] if len(plan.columns) > 1 else None
        job = TrainJob(
            plan.config,
            train_ds,
            eval_ds or None,
            model.model_load_kwargs(),
            model.tokenizer_load_kwargs(),
            settings=plan.settings,
            experiment_id=run_plan.experiment_id,
            resume_from_checkpoint=run_plan.resume_from_checkpoint,
            data_fingerprint=plan.fingerprint,
            objective=plan.objective,
            start_from=(plan.start_from or {}).get("path"),
            generation_samples=evaluation.generation_samples(
                trainer.record_generations if plan.objective == "sft" else 0,
                {s.name: plan.rows[s.name] for s in plan.evals},
                X,
                y,
                tokenizer,
                model.prompt_template,
                trainer.setup_chat_format,
            ),
        )
        result = launch(job, db=db, llm=model, ray_configs=trainer.ray_configs)
        try:  # the Validation's Metrics, on generations; a failing Metric leaves the run finished
            evaluation.validate_after_training(model, db)
        finally:
            resume.finish_run(db, model.identifier, run_plan.experiment_id)
    # The job stores fit's return value as JSON: of a ray.train.Result, its metrics.
    return result.metrics if trainer.ray_configs is not None else result


def train_dataset(plan: TrainingPlan, tokenizer, tokenization: t.Mapping, owner: t.Optional[str] = None):
    """The training dataset of ``plan`` on this process: its rows tokenized (cached by
    content), or the sources of a mix each tokenized (and cached) on its own and drawn by
    weight in the order the training's ``seed`` fixes.

    :param plan: The training's plan.
    :param tokenizer: The model's tokenizer.
    :param tokenization: :func:`tokenization_of` the model and trainer.
    :param owner: The tag of the model trained on it (its cache entries go with it).
    """
    objective = objectives.get(plan.objective)
    if not plan.mix:
        return objective.build_dataset(
            tokenizer, plan.rows["train"], plan.columns, tokenization, plan.train.data_hash, owner
        )
    parts = [
        objective.build_dataset(tokenizer, rows, plan.columns, tokenization, part.data_hash, owner)
        for rows, part in zip(plan.rows["train"].parts, plan.mix)
    ]
    return interleave(parts, [p.weight for p in plan.mix], plan.config.seed, plan.mix_strategy)


def migrate_tables(db: Datalayer, *classes: type) -> t.Dict[str, t.List[str]]:
    """Add the fields this package's components gained to ``db``'s existing SQL tables.

    Called while an apply is planned, before superduper writes anything: every process
    that records models, trainers, runs or checkpoints applies an ``LLM`` or its trainer
    first (Ray workers only after their driver did). Not called for the saves of a model
    in training (its apply migrated). See
    :func:`superduper_transformers.store.datalayer.migrate_component_tables`.

    :param db: The datalayer.
    :param classes: Further component classes (``LLM``: this module may not import it).
    :return: ``{table: [fields added]}``; empty when nothing was missing.
    """
    return migrate_component_tables(db, (*classes, LLMTrainer, Checkpoint, resume.TrainingRun))


def as_rows(values, columns: t.Sequence[str]):
    """Rows keyed by column name: ``FoldRows`` as they are, superduper's lists (values
    mapped by ``key``, the documented ``fit`` form) converted."""
    if isinstance(values, FoldRows):
        return values
    if len(columns) == 1:
        return [{columns[0]: v} for v in values]
    return [dict(zip(columns, v)) for v in values]


def preflight(model: LLM, db: Datalayer) -> t.Optional[TrainingPlan]:
    """Check and plan a training before the apply writes anything to the db.

    :param model: The ``LLM`` about to be applied with its trainer.
    :param db: The datalayer.
    :return: the plan (None when the model's trainer is not an ``LLMTrainer``).
    :raises ValueError: naming the field or key, the value and the fix.
    """
    if not isinstance(model.trainer, LLMTrainer):
        return None
    return build_plan(model, db)


#: Keywords that are the component's own fields (the rest are training keywords).
_OWN_FIELDS = frozenset(f.name for f in dc.fields(LLMTrainer)) | {"db"}
# superduper reads a component's fields from ``inspect.signature(cls.__init__)`` when it
# rebuilds one from the db: show it the fields' signature, not ``**kwargs``.
LLMTrainer.__init__.__signature__ = inspect.signature(_LLMTrainerFields.__init__)
