"""``LLMTrainer``: the superduper trainer component of this plugin.

It holds settings only (composition, not inheritance from ``TrainingArguments``):
its own fields for LoRA, quantization, Ray and db logging, and every keyword of
transformers' ``TrainingArguments`` / trl's ``SFTConfig`` collected into
``training_kwargs``. ``fit`` reads like a recipe: rows -> datasets -> ``train``.
"""

from __future__ import annotations

import dataclasses as dc
import functools
import typing as t

from superduper import logging
from superduper.components.model import Trainer
from superduper.misc import typing as st

from superduper_transformers import config as cfg
from superduper_transformers import data
from superduper_transformers.loading import check_model_path, load_tokenizer

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

    from superduper_transformers.model import LLM


class LLMTrainer(Trainer):
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
    :param resume_from_db: ``"auto"`` resumes an interrupted run from its latest
        checkpoint in the db; ``"never"`` always starts fresh.
    """

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
    ray_configs: t.Optional[st.Dill] = None
    resume_from_db: str = "auto"

    def postinit(self):
        """Validate every setting at construction, before anything reaches the db."""
        self.training_kwargs = dict(self.training_kwargs or {})
        cfg.validate_trainer(self)
        super().postinit()

    def fit(
        self,
        model: "LLM",
        db: "Datalayer",
        train_dataset: t.List,
        valid_dataset: t.List,
    ):
        """Fine-tune ``model`` on the selected rows and record the run in ``db``.

        :param model: The ``LLM`` to train.
        :param db: The datalayer.
        :param train_dataset: Training values mapped by ``key`` (``_fold == 'train'``).
        :param valid_dataset: Validation values mapped by ``key`` (``_fold == 'valid'``).
        """
        from superduper_transformers import resume
        from superduper_transformers.training import train

        X, y = cfg.input_output_keys(self.key)
        train_rows = data.rows_from_values(train_dataset, X, y)
        data.check_rows(train_rows, X, y, "training rows")
        eval_rows = named_eval_rows(model, db, valid_dataset, X, y)

        check_model_path(model.model_name_or_path)
        tokenizer = load_tokenizer(model.tokenizer_load_kwargs())
        build = functools.partial(
            data.build_dataset,
            tokenizer,
            X=X,
            y=y,
            max_length=self.max_seq_length,
            prompt_template=model.prompt_template,
            chat_format=self.setup_chat_format,
        )
        train_ds = build(train_rows)
        eval_ds = {name: build(rows) for name, rows in eval_rows.items()}
        if list(eval_ds) == ["valid"]:
            eval_ds = eval_ds["valid"]  # one set: metrics are plain `eval_loss`

        overrides = {}
        if eval_rows and not self.training_kwargs.get("metric_for_best_model"):
            first = next(iter(eval_rows))
            overrides["metric_for_best_model"] = "loss" if len(eval_rows) == 1 else f"{first}_loss"
        training_args = cfg.build_sft_config(
            self,
            output_dir=cfg.output_dir_for(self, model.identifier),
            has_eval=bool(eval_rows),
            **overrides,
        )
        with resume.active(model.identifier):
            # Resume the model's interrupted run (same experiment_id) or record a new one.
            plan = resume.start_run(db, model, self, training_args.output_dir)
            logging.info(
                f"Training {model.identifier} (run {plan.experiment_id}, from step {plan.step}): "
                f"{len(train_rows)} rows, eval sets {list(eval_rows)}, lora={self.use_lora}, "
                f"bits={self.bits}, output_dir={training_args.output_dir}"
            )
            result = train(
                training_args,
                train_ds,
                eval_ds or None,
                model.model_load_kwargs(),
                model.tokenizer_load_kwargs(),
                db=db,
                llm=model,
                ray_configs=self.ray_configs,
                config=self,
                experiment_id=plan.experiment_id,
                resume_from_checkpoint=plan.resume_from_checkpoint,
            )
            resume.finish_run(db, model.identifier, plan.experiment_id)
        # The job stores fit's return value as JSON: of a ray.train.Result, its metrics.
        return result.metrics if self.ray_configs is not None else result


def named_eval_rows(
    model: "LLM", db: "Datalayer", valid_values, X: str, y: t.Optional[str]
) -> t.Dict[str, t.List]:
    """Evaluation rows by name: ``valid`` (rows with ``_fold='valid'``) and each
    dataset of the model's ``validation``, under its own identifier."""
    out: t.Dict[str, t.List] = {}
    if valid_values:
        out["valid"] = data.rows_from_values(valid_values, X, y)
    if model.validation is not None:
        for ds in model.validation.datasets:
            ds.db = ds.db or db
            rows = [dict(r) for r in ds.data]
            data.check_rows(rows, X, y, f"rows of validation dataset '{ds.identifier}'")
            out[ds.identifier] = [{k: r[k] for k in (X, y) if k is not None} for r in rows]
    for name, rows in out.items():
        data.check_rows(rows, X, y, f"evaluation rows '{name}'")
    return out


def _fold_rows(trainer: LLMTrainer, db: "Datalayer", fold: str) -> t.List[t.Dict]:
    select = trainer.select
    table = db[select.table]
    return [dict(r) for r in select.filter(table["_fold"] == fold).execute()]


def preflight(model: "LLM", db: "Datalayer") -> None:
    """Check what training needs before the apply writes anything to the db.

    :param model: The ``LLM`` about to be applied with its trainer.
    :param db: The datalayer.
    :raises ValueError: naming the field or key, the value and the fix.
    """
    trainer = model.trainer
    if not isinstance(trainer, LLMTrainer):
        return
    check_model_path(model.model_name_or_path)
    from superduper_transformers.training import check_devices

    check_devices(trainer)
    X, y = cfg.input_output_keys(trainer.key)
    if trainer.select is None:
        raise data.DataError("LLMTrainer needs a `select` query returning the training rows.")
    train_rows = _fold_rows(trainer, db, "train")
    if not train_rows:
        total = len(trainer.select.execute())
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
    data.check_rows(train_rows, X, y, "training rows")
    valid_rows = _fold_rows(trainer, db, "valid")
    if valid_rows:
        data.check_rows(valid_rows, X, y, "validation rows (`_fold='valid'`)")
    if trainer.bits is not None:
        from superduper_transformers._optional import require

        require("bitsandbytes", "quant", f"`bits={trainer.bits}` (QLoRA)")
    if trainer.ray_configs is not None:
        from superduper_transformers.ray_config import check_ray_setup

        check_ray_setup(trainer.ray_configs, db)  # settings, shared storage, cluster address


def _accept_training_keywords(cls):
    """Let ``cls(...)`` take ``TrainingArguments``/``SFTConfig`` keywords directly.

    The component is a dataclass; its generated ``__init__`` knows only its own
    fields. This wrapper moves the training keywords into ``training_kwargs`` and
    rejects anything else with the closest valid names.
    """
    init = cls.__init__
    own = {f.name for f in dc.fields(cls)} | {"db"}

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        own_kwargs, training = cfg.split_unknown_kwargs(kwargs, own)
        if training:
            own_kwargs["training_kwargs"] = {**(own_kwargs.get("training_kwargs") or {}), **training}
        init(self, *args, **own_kwargs)

    cls.__init__ = __init__
    return cls


_accept_training_keywords(LLMTrainer)
