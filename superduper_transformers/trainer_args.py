"""Settings of an :class:`LLMTrainer` -> validated, typed training settings.

Every problem in the settings is gathered into one ``ValueError`` (as litgpt and
torchtune do), so a user fixes their configuration in one round trip instead of
one error at a time. Nothing here touches the database or loads a model.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import typing as t

from superduper_transformers import settings as resolved
from superduper_transformers.hf import objectives
from superduper_transformers.launch.ray_settings import secret_env_issues

#: Valid values of ``LLMTrainer.bits``.
VALID_BITS = (None, 4, 8)
#: Valid values of ``LLMTrainer.lora_bias`` (peft's ``LoraConfig.bias``).
VALID_LORA_BIAS = ("none", "all", "lora_only")
#: Valid values of ``LLMTrainer.resume_from_db``.
VALID_RESUME = ("auto", "never")
#: Valid values of ``LLMTrainer.on_data_change``.
VALID_ON_DATA_CHANGE = ("warn", "refuse", "restart")
#: Default folder for the training output, relative to the working directory.
DEFAULT_OUTPUT_ROOT = "superduper_training"


class ConfigError(ValueError):
    """Invalid trainer settings. The message lists every problem and its fix."""


class UnknownKeywordError(ConfigError, TypeError):
    """A keyword that ``LLMTrainer`` does not know.

    Also a ``TypeError`` with Python's wording ("got an unexpected keyword argument"),
    which superduper's decoder relies on to drop metadata keys when it rebuilds a
    stored component.
    """


def sft_config_fields() -> t.FrozenSet[str]:
    """Names accepted by trl's ``SFTConfig`` (a superset of ``TrainingArguments``)."""
    return objectives.config_fields("sft")


def _other_objective(name: str, objective: str) -> t.Optional[str]:
    """The objective whose trl config has the keyword ``name`` (not ``objective``'s), if any."""
    return next(
        (o for o in objectives.names() if o != objective and name in objectives.config_fields(o)), None
    )


def _unknown_keyword(k: str, objective: str, valid: t.Iterable[str], where: str) -> str:
    other = _other_objective(k, objective)
    if other is not None:
        return (
            f"{where} `{k}` is a setting of the `{other}` objective, and this trainer's objective "
            f"is `{objective}`: set `objective={other!r}`, or remove `{k}`."
        )
    close = difflib.get_close_matches(k, sorted(valid), n=3)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    config = objectives.get(objective).config_class.split(":")[-1]
    return (
        f"{where} `{k}`: it is neither an LLMTrainer field nor a field of transformers' "
        f"TrainingArguments / trl's {config} (objective `{objective}`).{hint}"
    )


def split_unknown_kwargs(
    kwargs: t.Dict[str, t.Any], own_fields: t.Iterable[str]
) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any]]:
    """Split keyword arguments into the trainer's own fields and its trl config's fields.

    The trl config is the one of ``kwargs['objective']`` (default ``sft``: ``SFTConfig``).

    :param kwargs: Keyword arguments given to ``LLMTrainer``.
    :param own_fields: Field names of the ``LLMTrainer`` component.
    :raises ConfigError: for a keyword that is neither, with the closest valid names (or
        the objective it belongs to).
    """
    own_fields = set(own_fields)
    objective = kwargs.get("objective") or "sft"
    try:
        fields = objectives.config_fields(objective)
    except ValueError as e:
        raise ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
    own, training = {}, {}
    unknown = []
    for k, v in kwargs.items():
        if k in own_fields:
            own[k] = v
        elif k in fields:
            training[k] = v
        else:
            unknown.append(k)
    if unknown:
        where = "LLMTrainer got an unexpected keyword argument"
        raise UnknownKeywordError(
            "\n".join(_unknown_keyword(k, objective, own_fields | fields, where) for k in unknown)
        )
    return own, training


def validate_trainer(trainer: t.Any) -> None:
    """Check the settings of an ``LLMTrainer``; raise one error listing every problem.

    :param trainer: The trainer component to check.
    :raises ConfigError: naming each field, the value received and the fix.
    """
    issues: t.List[str] = []
    tk = trainer.training_kwargs or {}
    try:
        objective = objectives.get(getattr(trainer, "objective", None))
    except ValueError as e:
        raise ConfigError(f"Invalid LLMTrainer settings:\n- {e}") from e
    fields = objectives.config_fields(objective.name)
    for k in sorted(set(tk) - fields):
        issues.append(_unknown_keyword(k, objective.name, fields, "`training_kwargs` has"))
    issues += resolved.secret_issues(tk, "training_kwargs")
    for i, entry in enumerate(getattr(trainer, "callbacks", None) or []):
        issues += resolved.secret_issues(
            entry.get("kwargs"),
            f"callbacks[{i}]['kwargs']",
            fix="let the callback read it from the environment (`os.environ`) where it runs",
        )
    issues += secret_env_issues(trainer.ray_configs)
    if getattr(trainer, "transform", None) is not None:
        issues.append(
            "`transform` is not used by LLMTrainer (rows are tokenized from `key`), and "
            "superduper would store it pickled, which the plugin never does: remove it."
        )
    if trainer.bits not in VALID_BITS:
        issues.append(f"`bits` must be None (no quantization), 4 (QLoRA NF4) or 8, got {trainer.bits!r}.")
    if trainer.bits is not None and not trainer.use_lora:
        issues.append(
            f"`bits={trainer.bits}` needs `use_lora=True`: a quantized base model cannot be "
            "fully fine-tuned. Set `use_lora=True` or `bits=None`."
        )
    if trainer.use_lora:
        if not isinstance(trainer.lora_r, int) or isinstance(trainer.lora_r, bool) or trainer.lora_r <= 0:
            issues.append(f"`lora_r` must be a positive integer, got {trainer.lora_r!r}.")
        if not isinstance(trainer.lora_alpha, (int, float)) or trainer.lora_alpha <= 0:
            issues.append(f"`lora_alpha` must be positive, got {trainer.lora_alpha!r}.")
        if not _is_number(trainer.lora_dropout) or not (0.0 <= trainer.lora_dropout < 1.0):
            issues.append(
                f"`lora_dropout` must be a number in [0, 1) (e.g. 0.05), got {trainer.lora_dropout!r}."
            )
        if trainer.lora_bias not in VALID_LORA_BIAS:
            issues.append(f"`lora_bias` must be one of {VALID_LORA_BIAS}, got {trainer.lora_bias!r}.")
    if not isinstance(trainer.max_seq_length, int) or trainer.max_seq_length <= 0:
        issues.append(f"`max_seq_length` must be a positive integer, got {trainer.max_seq_length!r}.")
    if "max_length" in tk:
        issues.append(
            "`max_length` was given as a training keyword; set `max_seq_length` instead "
            "(it becomes SFTConfig's `max_length`)."
        )
    issues += _range_issues(tk)
    limit = tk.get("save_total_limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        issues.append(
            f"`save_total_limit` must be None (keep every checkpoint) or an integer >= 1, got {limit!r}."
        )
    if tk.get("bf16") and tk.get("fp16"):
        issues.append(
            "`bf16=True` and `fp16=True` were both given: choose one, or neither to let the "
            "plugin choose from the hardware (bf16 where it is native, else fp32 on the CPU)."
        )
    if tk.get("packing") and not trainer.max_seq_length:
        issues.append(
            f"`packing=True` needs `max_seq_length` (the length of a packed sequence), got "
            f"{trainer.max_seq_length!r}: set it, e.g. `max_seq_length=512`, or drop `packing`."
        )
    if trainer.resume_from_db not in VALID_RESUME:
        issues.append(f"`resume_from_db` must be one of {VALID_RESUME}, got {trainer.resume_from_db!r}.")
    if trainer.on_data_change not in VALID_ON_DATA_CHANGE:
        issues.append(
            f"`on_data_change` must be one of {VALID_ON_DATA_CHANGE}, got {trainer.on_data_change!r}: "
            "what to do when an interrupted run's training rows changed before it resumes."
        )
    issues += _new_field_issues(trainer)
    if trainer.num_gpus is not None and (not isinstance(trainer.num_gpus, int) or trainer.num_gpus < 0):
        issues.append(f"`num_gpus` must be None or an integer >= 0, got {trainer.num_gpus!r}.")
    elif (trainer.num_gpus or 0) > 1 and trainer.ray_configs is None:
        issues.append(
            f"`num_gpus={trainer.num_gpus}` without `ray_configs`: several GPUs train with Ray "
            "(one worker per GPU). Set `ray_configs={'scaling_config': ScalingConfig("
            f"num_workers={trainer.num_gpus}, use_gpu=True)}}`, or `num_gpus=1`."
        )
    if trainer.ray_configs is not None:
        if not isinstance(trainer.ray_configs, dict):
            issues.append(
                f"`ray_configs` must be a dict with a `scaling_config`, got {type(trainer.ray_configs).__name__}."
            )
        elif "scaling_config" not in trainer.ray_configs:
            issues.append(
                "`ray_configs` needs a `scaling_config` (a ray.train.ScalingConfig, e.g. "
                "`ScalingConfig(num_workers=2)`), got keys "
                f"{sorted(trainer.ray_configs)}."
            )
    issues += objective.config_issues(tk)
    issues += _reward_issues(trainer, objective.name)
    key_issue = objective.key_issue(trainer.key)
    if key_issue:
        issues.append(key_issue)
    if issues:
        raise ConfigError("Invalid LLMTrainer settings:\n" + "\n".join(f"- {i}" for i in issues))


def _reward_issues(trainer: t.Any, objective: str) -> t.List[str]:
    """GRPO needs reward functions; no other objective reads them."""
    funcs = getattr(trainer, "reward_funcs", None)
    if objective == "grpo" and not funcs:
        return [
            "`objective='grpo'` needs `reward_funcs`: GRPO learns from the rewards of its sampled "
            "completions. Give the import path of a function, e.g. "
            "`reward_funcs=['my_package.rewards:is_short']`, that takes `prompts`, `completions` and "
            "`**kwargs` and returns one number per completion."
        ]
    if objective != "grpo" and funcs:
        return [
            f"`reward_funcs` are read by the `grpo` objective only, and this trainer's objective is "
            f"`{objective}`: set `objective='grpo'`, or remove `reward_funcs`."
        ]
    return []


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _new_field_issues(trainer: t.Any) -> t.List[str]:
    """Early stopping and recorded generations (None: a row stored before they existed)."""
    issues = []
    patience = getattr(trainer, "early_stopping_patience", None)
    threshold = getattr(trainer, "early_stopping_threshold", None)
    if patience is not None and not (_is_int(patience) and patience >= 1):
        issues.append(
            f"`early_stopping_patience` must be None (no early stopping) or an integer >= 1 "
            f"(evaluations without improvement before training stops), got {patience!r}."
        )
    if threshold is not None and not (_is_number(threshold) and threshold >= 0):
        issues.append(f"`early_stopping_threshold` must be a number >= 0 (e.g. 0.01), got {threshold!r}.")
    if threshold is not None and patience is None:
        issues.append("`early_stopping_threshold` is set without `early_stopping_patience`: set both.")
    n = getattr(trainer, "record_generations", None)
    if n is not None and not (_is_int(n) and n >= 0):
        issues.append(
            f"`record_generations` must be None or an integer >= 0 (prompts generated for at each "
            f"evaluation), got {n!r}."
        )
    return issues


#: The package and the extra of this plugin that installs each tracker ``report_to`` may name.
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def report_to_issues(report_to: t.Any) -> t.List[str]:
    """``report_to`` names trackers transformers knows and that are installed here.

    transformers only fails when the trainer is built (mid-``fit``); here the apply
    is refused before it writes, naming the package and this plugin's extra.
    """
    from transformers.integrations import integration_utils as iu

    if report_to is None or report_to in ("none", "all", ["none"], ["all"]):
        return []
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    issues = []
    for name in names:
        if name not in iu.INTEGRATION_TO_CALLBACK:
            issues.append(
                f"`report_to` names {name!r}, which transformers does not know: use 'none', 'all' "
                f"or some of {sorted(iu.INTEGRATION_TO_CALLBACK)}."
            )
            continue
        module = {"azure_ml": "azureml", "comet_ml": "comet", "flyte": "flytekit"}.get(name, name)
        check = getattr(iu, f"is_{module}_available", None)
        if check is not None and not check():
            package, extra = TRACKERS.get(name, (name, None))
            how = f"`pip install 'superduper_transformers[{extra}]'`" if extra else f"`pip install {package}`"
            issues.append(
                f"`report_to` names {name!r}, which needs the package `{package}`, not installed here: "
                f"install it with {how}, or remove {name!r} from `report_to`."
            )
    return issues


def runtime_issues(kwargs: t.Mapping[str, t.Any], trainer: t.Any, has_eval: bool) -> t.List[str]:
    """Problems only visible with the data and the installed packages (at apply time)."""
    from superduper_transformers.hf.callbacks import CallbackError, load_callback_class

    issues = report_to_issues(kwargs.get("report_to"))
    for entry in getattr(trainer, "callbacks", None) or []:
        try:
            load_callback_class(entry["class"])
        except CallbackError as e:
            issues.append(str(e))
    if getattr(trainer, "early_stopping_patience", None) and not has_eval:
        issues.append(
            f"`early_stopping_patience={trainer.early_stopping_patience}` needs evaluation data (it "
            "watches `metric_for_best_model`): insert rows with `_fold='valid'` or give the model "
            "a `validation` with datasets."
        )
    if getattr(trainer, "early_stopping_patience", None) and strategy(kwargs, "eval_strategy") == "no":
        issues.append(
            f"`early_stopping_patience={trainer.early_stopping_patience}` needs evaluations: set "
            "`eval_strategy='steps'` (with `eval_steps`) or `'epoch'`."
        )
    if kwargs.get("load_best_model_at_end") and has_eval:
        issues += _best_model_alignment_issues(kwargs)
    return issues


#: transformers' defaults of the strategy settings.
_STRATEGY_DEFAULTS = {"eval_strategy": "no", "save_strategy": "steps", "logging_strategy": "steps"}


def strategy(kwargs: t.Mapping[str, t.Any], name: str) -> str:
    """A strategy setting (``eval_strategy``, ``save_strategy``...) as a plain lower-case
    name: ``"steps"``, ``IntervalStrategy.STEPS`` and ``"STEPS"`` all read ``steps``; absent,
    transformers' default. The one place these are normalised."""
    value = kwargs.get(name)
    if value is None:
        return _STRATEGY_DEFAULTS[name]
    return str(getattr(value, "value", value)).split(".")[-1].lower()


def _best_model_alignment_issues(kwargs: t.Mapping[str, t.Any]) -> t.List[str]:
    """transformers' rule for ``load_best_model_at_end``: a checkpoint at every evaluation."""
    save, evaluate = strategy(kwargs, "save_strategy"), strategy(kwargs, "eval_strategy")
    if save == "best":
        return []
    if save != evaluate:
        return [
            f"`load_best_model_at_end=True` needs a checkpoint at every evaluation, but "
            f"`save_strategy`={save!r} and `eval_strategy`={evaluate!r} differ: set both to 'steps' "
            "(with `save_steps` a multiple of `eval_steps`) or both to 'epoch'."
        ]
    save_steps, eval_steps = kwargs.get("save_steps", 500), kwargs.get("eval_steps")
    eval_steps = eval_steps or kwargs.get("logging_steps", 500)
    if save == "steps" and _is_number(save_steps) and _is_number(eval_steps) and eval_steps > 0:
        if save_steps >= 1 and eval_steps >= 1 and save_steps % eval_steps != 0:
            return [
                f"`load_best_model_at_end=True` needs a checkpoint at every evaluation: `save_steps`="
                f"{save_steps} must be a multiple of `eval_steps`={eval_steps} (e.g. save_steps="
                f"{eval_steps * max(1, round(save_steps / eval_steps))})."
            ]
    return []


#: Numeric training settings: (name, kind, lower bound, inclusive, example of a valid value).
_RANGES = (
    ("learning_rate", float, 0, False, "2e-4"),
    ("num_train_epochs", float, 0, False, "3"),
    ("per_device_train_batch_size", int, 1, True, "8"),
    ("per_device_eval_batch_size", int, 1, True, "8"),
    ("gradient_accumulation_steps", int, 1, True, "4"),
    ("save_steps", float, 0, False, "100"),
    ("eval_steps", float, 0, False, "100"),
    ("logging_steps", float, 0, False, "10"),
    ("warmup_steps", float, 0, True, "0"),
    ("weight_decay", float, 0, True, "0.0"),
    ("max_grad_norm", float, 0, True, "1.0"),
)


def _range_issues(tk: t.Mapping[str, t.Any]) -> t.List[str]:
    """Type and range of numeric training settings: caught here, not in the middle of ``fit``."""
    issues = []
    for name, kind, low, inclusive, example in _RANGES:
        if name not in tk or tk[name] is None:
            continue
        value = tk[name]
        ok_type = _is_number(value) and (kind is float or float(value).is_integer())
        ok = ok_type and (value >= low if inclusive else value > low)
        if not ok:
            bound = f">= {low}" if inclusive else f"> {low}"
            what = "an integer" if kind is int else "a number"
            issues.append(f"`{name}` must be {what} {bound} (e.g. {example}), got {value!r}.")
    steps = tk.get("max_steps")
    if steps is not None and not (
        isinstance(steps, int) and not isinstance(steps, bool) and (steps > 0 or steps == -1)
    ):
        issues.append(
            f"`max_steps` must be a positive integer (or -1 to train `num_train_epochs`), got {steps!r}."
        )
    return issues


def input_output_keys(key: t.Any) -> t.Tuple[str, t.Optional[str]]:
    """The (X, y) column names of a trainer ``key``; y is None for whole-text learning."""
    if isinstance(key, str):
        return key, None
    if len(key) == 1:
        return key[0], None
    return key[0], key[1]


#: Longest folder name made from a model identifier (before the hash suffix).
_MAX_FOLDER_NAME = 100


def safe_folder_name(identifier: str) -> str:
    """A folder name for ``identifier`` that stays one level below its parent.

    Path separators, ``..``, leading dots and anything but letters, digits, ``_``, ``-``
    and ``.`` become ``_``; a name that had to change gets ``-<8 hex>`` of the original,
    so two identifiers that differ only in those characters keep separate folders. A
    plain identifier (``tiny``, ``my-model.v2``) is kept as it is.

    :param identifier: The model identifier.
    """
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", identifier)
    name = re.sub(r"\.{2,}", "_", name).lstrip(".")[:_MAX_FOLDER_NAME]
    if name == identifier and name:
        return name
    return f"{name or 'model'}-{hashlib.sha256(identifier.encode()).hexdigest()[:8]}"


def output_dir_for(trainer: t.Any, model_identifier: str) -> str:
    """The training output folder: the user's ``output_dir`` or ``superduper_training/<model>``.

    The default folder is made from the identifier by :func:`safe_folder_name`: checkpoint
    rotation deletes folders in it, so an identifier such as ``../../x`` must not place it
    outside ``superduper_training``.

    :param trainer: The trainer component.
    :param model_identifier: Identifier of the ``LLM`` being trained.
    """
    given = trainer.training_kwargs.get("output_dir")
    if given:
        return os.path.abspath(given)
    root = os.path.abspath(DEFAULT_OUTPUT_ROOT)
    path = os.path.abspath(os.path.join(root, safe_folder_name(model_identifier)))
    if os.path.dirname(path) != root:  # cannot happen with a safe name; never rotate elsewhere
        raise ConfigError(
            f"Model identifier {model_identifier!r} gives the output folder {path}, outside "
            f"{root}. Give the trainer an explicit `output_dir`."
        )
    return path


def precision_for(trainer: t.Any) -> resolved.Precision:
    """The training precision of ``trainer`` (see :func:`settings.precision_for_trainer`)."""
    return resolved.precision_for_trainer(trainer)


def config_kwargs(trainer: t.Any, output_dir: str, has_eval: bool, **overrides) -> t.Dict[str, t.Any]:
    """The keywords of the trainer's trl config (``SFTConfig``, ``DPOConfig``...), resolved.

    Defaults differ from transformers' only where this plugin needs it:
    ``report_to='none'`` (transformers 5's default too: no tracker is contacted unless
    the user names it; the db records the run in any case); the objective's own
    defaults (:meth:`..hf.objectives.Objective.config_kwargs`: for SFT, padding-free
    batches of rows we tokenized); and the precision resolved from the hardware.

    :param trainer: The trainer component.
    :param output_dir: Folder where the HF trainer writes its checkpoints.
    :param has_eval: Whether evaluation datasets exist (else evaluation is turned off).
    :param overrides: Extra keyword arguments that win over the trainer's.
    :raises ConfigError: naming the setting, the value and the fix.
    """
    objective = objectives.get(getattr(trainer, "objective", None))
    kwargs: t.Dict[str, t.Any] = {"report_to": "none", "save_safetensors": True}
    kwargs.update(trainer.training_kwargs or {})
    kwargs["output_dir"] = output_dir
    kwargs = objective.config_kwargs(kwargs, trainer.max_seq_length)
    kwargs.setdefault("gradient_checkpointing", False)
    if not has_eval:
        if strategy(kwargs, "eval_strategy") != "no":
            raise ConfigError(
                f"`eval_strategy`={kwargs['eval_strategy']!r} needs evaluation data, and there is "
                "none: insert rows with `_fold='valid'`, give the model a `validation` with "
                "datasets, or set `eval_strategy='no'`."
            )
        kwargs["eval_strategy"] = "no"
        if kwargs.get("load_best_model_at_end"):
            raise ConfigError(
                "`load_best_model_at_end=True` needs evaluation data: insert rows with "
                "`_fold='valid'` or give the model a `validation` with datasets."
            )
    if trainer.num_gpus == 0:
        kwargs["use_cpu"] = True
    kwargs.update(overrides)
    issues = runtime_issues(kwargs, trainer, has_eval)
    if issues:
        raise ConfigError("Invalid LLMTrainer settings:\n" + "\n".join(f"- {i}" for i in issues))
    # trl turns bf16 on by default, also on CPUs that only emulate it (20x slower):
    # the precision is resolved from the hardware unless the user set it.
    precision = precision_for(trainer)
    kwargs.update(precision.trainer_kwargs())
    if precision.device == "cpu" and precision.name != resolved.FP32:
        kwargs["use_cpu"] = True  # transformers refuses half precision on the CPU otherwise
    # ``save_safetensors`` was removed from TrainingArguments in some releases.
    fields = objectives.config_fields(objective.name)
    return {k: v for k, v in kwargs.items() if k in fields}


def make_config(objective: str, kwargs: t.Mapping[str, t.Any], one_gpu: bool = False):
    """Construct ``objective``'s trl config from resolved keywords (:func:`config_kwargs`).

    Construction runs transformers' and trl's own checks and resets accelerate's
    device state: done once per training, never while a trainer runs in this process.

    :param objective: ``sft``, ``dpo``...
    :param kwargs: The resolved keywords.
    :param one_gpu: ``num_gpus=1`` locally: cap the GPUs transformers uses at one.
    :raises ConfigError: with transformers' / trl's message.
    """
    cls = objectives.load(objectives.get(objective).config_class)
    try:
        args = cls(**kwargs)
    except (ValueError, TypeError) as e:  # transformers' / trl's own checks
        raise ConfigError(f"Invalid LLMTrainer settings: transformers/trl refused them: {e}") from e
    if one_gpu:
        # transformers wraps the model in nn.DataParallel over *every* visible GPU when
        # it sees several; `num_gpus=1` means one, so cap the count it resolved.
        _ = args.device
        args._n_gpu = min(args._n_gpu, 1)
    return args


def build_config(trainer: t.Any, output_dir: str, has_eval: bool, **overrides):
    """The trainer's trl config (of its objective), resolved and constructed.

    :param trainer: The trainer component.
    :param output_dir: Folder where the HF trainer writes its checkpoints.
    :param has_eval: Whether evaluation datasets exist.
    :param overrides: Extra keyword arguments that win over the trainer's.
    """
    kwargs = config_kwargs(trainer, output_dir, has_eval, **overrides)
    one_gpu = trainer.num_gpus == 1 and trainer.ray_configs is None
    return make_config(getattr(trainer, "objective", None) or "sft", kwargs, one_gpu)


#: The seed's name (an SFT trainer's config is an ``SFTConfig``).
build_sft_config = build_config
