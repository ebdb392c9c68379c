"""Resolved settings: plain, frozen values handed to every lower layer.

This module imports nothing from the package. Each value is resolved **once** (from
the ``LLMTrainer``, the hardware and the built ``SFTConfig``) and then read by the
trainer, the quantization config and prediction alike, so no layer re-derives a
default from the raw keyword dict and disagrees with another.
"""

from __future__ import annotations

import dataclasses as dc
import functools
import json
import os
import typing as t

#: Overrides the CPU bf16 detection: ``1`` (treat the CPU as bf16-capable) or ``0``.
#: For machines where detection is wrong, and to test both paths on one machine.
CPU_BF16_ENV = "SD_TRANSFORMERS_CPU_BF16"

FP32, BF16, FP16 = "fp32", "bf16", "fp16"


@dc.dataclass(frozen=True)
class Precision:
    """The numeric precision of a training (and of prediction with its weights).

    :param name: ``fp32``, ``bf16`` or ``fp16`` (mixed precision: fp32 master weights,
        autocast to the half type).
    :param device: ``cpu`` or ``cuda``: where it was resolved for.
    :param reason: Why this precision was chosen (logged once at the start).
    """

    name: str
    device: str
    reason: str

    @property
    def bf16(self) -> bool:
        """Whether ``SFTConfig(bf16=...)`` is on."""
        return self.name == BF16

    @property
    def fp16(self) -> bool:
        """Whether ``SFTConfig(fp16=...)`` is on."""
        return self.name == FP16

    @property
    def torch_dtype(self):
        """The compute dtype (QLoRA's ``bnb_4bit_compute_dtype``, autocast at predict)."""
        import torch

        return {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}[self.name]

    def trainer_kwargs(self) -> t.Dict[str, bool]:
        """``bf16``/``fp16`` for ``SFTConfig``: both set, so trl's bf16 default cannot win."""
        return {"bf16": self.bf16, "fp16": self.fp16}


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512-BF16 or AMX) for torch.

    Without it, torch emulates bf16 matmuls: a LoRA step of a 135M model took 40 s in
    bf16 autocast against 1.9 s in fp32 on an AVX2-only CPU. torch's dispatch level
    (``ATEN_CPU_CAPABILITY``) is honoured: below AVX-512 torch does not use the bf16
    instructions even where the CPU has them.
    """
    forced = os.environ.get(CPU_BF16_ENV)
    if forced in {"0", "1"}:
        return forced == "1"
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    if not capability.startswith("AVX512"):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def cuda_supports_bf16() -> bool:
    """Whether the current CUDA device computes bf16 (Ampere and later)."""
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(
    device: str,
    bf16: t.Optional[bool] = None,
    fp16: t.Optional[bool] = None,
) -> Precision:
    """Choose the training precision from the user's settings, else from the hardware.

    An explicit ``bf16=True`` or ``fp16=True`` wins (and ``bf16=False``/``fp16=False``
    rule those out). Otherwise: on the CPU, bf16 only where the CPU has it natively,
    else fp32; on CUDA, bf16 where supported, else fp16.

    :param device: ``cpu`` or ``cuda``: where training (or prediction) runs.
    :param bf16: The user's ``bf16`` setting, None when not given.
    :param fp16: The user's ``fp16`` setting, None when not given.
    """
    if bf16 and fp16:
        raise ValueError(
            "`bf16=True` and `fp16=True` were both given: choose one (or neither, to let "
            "the plugin choose from the hardware)."
        )
    if bf16:
        return Precision(BF16, device, "`bf16=True` was set")
    if fp16:
        return Precision(FP16, device, "`fp16=True` was set")
    if device == "cuda":
        if cuda_supports_bf16() and bf16 is None:
            return Precision(BF16, device, "the GPU supports bf16")
        if fp16 is None:
            return Precision(FP16, device, "the GPU has no bf16 (or `bf16=False`): fp16 mixed precision")
        return Precision(FP32, device, "`bf16=False` and `fp16=False` were set")
    if bf16 is None and cpu_has_native_bf16():
        return Precision(BF16, device, "the CPU computes bf16 natively (AVX-512-BF16/AMX)")
    if bf16 is False:
        return Precision(FP32, device, "`bf16=False` was set")
    return Precision(
        FP32,
        device,
        "the CPU has no native bf16 (no AVX-512-BF16/AMX): bf16 would be emulated, about "
        "20x slower; set `bf16=True` to force it",
    )


def precision_of(training_args) -> Precision:
    """The precision an already built ``TrainingArguments``/``SFTConfig`` trains in.

    Lower layers (model loading, QLoRA) read the resolved value from the trainer's
    arguments, so they can never disagree with the training loop.
    """
    device = "cpu" if getattr(training_args, "use_cpu", False) else "cuda"
    if getattr(training_args, "bf16", False):
        return Precision(BF16, device, "the training arguments")
    if getattr(training_args, "fp16", False):
        return Precision(FP16, device, "the training arguments")
    return Precision(FP32, device, "the training arguments")


def _ray_use_gpu(ray_configs: t.Any) -> t.Optional[bool]:
    """``ScalingConfig.use_gpu`` of (plain) ``ray_configs``; None for a local training."""
    if ray_configs is None:
        return None
    scaling = ray_configs.get("scaling_config") if isinstance(ray_configs, dict) else None
    use_gpu = scaling.get("use_gpu") if isinstance(scaling, dict) else getattr(scaling, "use_gpu", False)
    return bool(use_gpu)


def precision_for_trainer(trainer: t.Any) -> Precision:
    """The training precision of an ``LLMTrainer``-like object: its explicit ``bf16``/``fp16``,
    else the hardware's where it trains (its Ray workers' devices when it has ``ray_configs``).

    The one place a trainer's precision is resolved: the ``SFTConfig``, the QLoRA compute
    dtype and prediction all read this value (or the ``SFTConfig`` built from it).
    """
    tk = getattr(trainer, "training_kwargs", None) or {}
    device = training_device(
        bool(tk.get("use_cpu")),
        getattr(trainer, "num_gpus", None),
        _ray_use_gpu(getattr(trainer, "ray_configs", None)),
    )
    return resolve_precision(device, tk.get("bf16"), tk.get("fp16"))


def training_device(use_cpu: bool, num_gpus: t.Optional[int], ray_use_gpu: t.Optional[bool] = None) -> str:
    """``cuda`` or ``cpu``: where a training with these settings runs.

    :param use_cpu: ``TrainingArguments.use_cpu``.
    :param num_gpus: ``LLMTrainer.num_gpus`` (0 forces the CPU).
    :param ray_use_gpu: ``ScalingConfig.use_gpu`` of a Ray training (its workers decide,
        not the driver), None for a local training.
    """
    if ray_use_gpu is not None:
        return "cuda" if ray_use_gpu else "cpu"
    if use_cpu or num_gpus == 0:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


#: How examples are laid out in a batch: padded to the longest, flattened into one
#: sequence without padding (position ids restart per example), or packed into
#: ``max_seq_length`` bins (trl's best-fit-decreasing, then flattened the same way).
PADDED, PADDING_FREE, PACKED = "padded", "padding_free", "packed"


@dc.dataclass(frozen=True)
class Batching:
    """The batch layout of a training, and whether the user chose it.

    :param mode: ``padded``, ``padding_free`` (the default) or ``packed``.
    :param explicit: The user set ``packing`` or ``padding_free``. A default layout falls
        back to padding when the model cannot keep flattened examples apart; a user's
        choice is kept (with a warning).
    """

    mode: str = PADDED
    explicit: bool = False


def resolve_batching(training_kwargs: t.Optional[t.Mapping[str, t.Any]]) -> Batching:
    """The batch layout from an ``LLMTrainer``'s ``training_kwargs``.

    ``packing=True`` packs; ``padding_free=True`` flattens each batch; either one set to
    False (and no other) pads. Neither given: padding-free, which trains on the same
    examples per step as padding (same steps, same loss) without computing on pad tokens.

    :param training_kwargs: The trainer's ``SFTConfig`` keywords.
    """
    tk = training_kwargs or {}
    explicit = "packing" in tk or "padding_free" in tk
    if tk.get("packing"):
        return Batching(PACKED, True)
    if tk.get("padding_free"):
        return Batching(PADDING_FREE, True)
    return Batching(PADDED, True) if explicit else Batching(PADDING_FREE, False)


@dc.dataclass(frozen=True)
class LoraSettings:
    """What peft's ``LoraConfig`` is built from.

    :param r: LoRA rank.
    :param alpha: Scaling numerator.
    :param dropout: Dropout on the LoRA branch.
    :param target_modules: ``"all-linear"`` or module names.
    :param bias: ``"none"``, ``"all"`` or ``"lora_only"``.
    :param modules_to_save: Modules trained and saved in full beside the adapter.
    """

    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: t.Union[str, t.Tuple[str, ...]] = "all-linear"
    bias: str = "none"
    modules_to_save: t.Optional[t.Tuple[str, ...]] = None


@dc.dataclass(frozen=True)
class TrainSettings:
    """Everything below the components needs to know about one training, resolved once.

    Built by :func:`from_trainer` from an ``LLMTrainer`` (or anything with its fields)
    and the resolved ``SFTConfig``; handed to ``hf`` and ``launch``, which never see a
    component.

    :param lora: LoRA settings, None for full fine-tuning.
    :param bits: 4 or 8 to load the base quantized (QLoRA), None for no quantization.
    :param precision: The resolved precision (trainer, QLoRA compute dtype, predict).
    :param gradient_checkpointing: As resolved in the ``SFTConfig``.
    :param log_to_db: Record checkpoints and metrics in the db during training.
    :param callbacks: The user's ``TrainerCallback``s as ``(import path, kwargs as JSON)``
        pairs, built where training runs.
    :param early_stopping: ``(patience, threshold)`` of transformers' ``EarlyStoppingCallback``,
        or None.
    :param record_generations: Prompts of the first eval set to generate for at each
        evaluation and record on the model (0: none).
    :param batching: The batch layout (:func:`resolve_batching`).
    :param reward_funcs: GRPO's reward functions as ``(import path, kwargs as JSON)`` pairs,
        imported where training runs.
    """

    lora: t.Optional[LoraSettings] = LoraSettings()
    bits: t.Optional[int] = None
    precision: Precision = Precision(FP32, "cpu", "default")
    gradient_checkpointing: bool = False
    log_to_db: bool = True
    callbacks: t.Tuple[t.Tuple[str, str], ...] = ()
    early_stopping: t.Optional[t.Tuple[int, float]] = None
    record_generations: int = 0
    batching: Batching = Batching()
    reward_funcs: t.Tuple[t.Tuple[str, str], ...] = ()

    @classmethod
    def from_trainer(cls, trainer: t.Any, training_args: t.Any = None) -> TrainSettings:
        """Resolve the settings of an ``LLMTrainer``-like object.

        :param trainer: An object with the ``LLMTrainer`` fields (``use_lora``,
            ``lora_*``, ``bits``, ``log_to_db``, ``training_kwargs``, ``num_gpus``).
        :param training_args: The built ``SFTConfig``: its precision and gradient
            checkpointing are the resolved values; without it they are resolved here
            from the trainer's keywords and the hardware, as the ``SFTConfig`` would be.
        """
        tk = getattr(trainer, "training_kwargs", None) or {}
        lora = None
        if getattr(trainer, "use_lora", True):
            targets = getattr(trainer, "lora_target_modules", "all-linear")
            saved = getattr(trainer, "lora_modules_to_save", None)
            lora = LoraSettings(
                r=getattr(trainer, "lora_r", 8),
                alpha=getattr(trainer, "lora_alpha", 16),
                dropout=getattr(trainer, "lora_dropout", 0.05),
                target_modules=targets if isinstance(targets, str) else tuple(targets),
                bias=getattr(trainer, "lora_bias", "none"),
                modules_to_save=tuple(saved) if saved else None,
            )
        if training_args is not None:
            precision = precision_of(training_args)
            checkpointing = bool(getattr(training_args, "gradient_checkpointing", False))
        else:
            precision = precision_for_trainer(trainer)
            checkpointing = bool(tk.get("gradient_checkpointing", False))
        patience = getattr(trainer, "early_stopping_patience", None)
        threshold = getattr(trainer, "early_stopping_threshold", None)
        return cls(
            lora=lora,
            bits=getattr(trainer, "bits", None),
            precision=precision,
            gradient_checkpointing=checkpointing,
            log_to_db=bool(getattr(trainer, "log_to_db", True)),
            callbacks=tuple(
                (c["class"], json.dumps(c.get("kwargs") or {}, sort_keys=True))
                for c in getattr(trainer, "callbacks", None) or []
            ),
            early_stopping=(int(patience), float(threshold or 0.0)) if patience else None,
            record_generations=int(getattr(trainer, "record_generations", None) or 0),
            batching=resolve_batching(tk),
            reward_funcs=tuple(
                (r["function"], json.dumps(r.get("kwargs") or {}, sort_keys=True))
                for r in getattr(trainer, "reward_funcs", None) or []
            ),
        )


def as_train_settings(config: t.Any) -> t.Optional[TrainSettings]:
    """``config`` as :class:`TrainSettings`: itself, resolved from an ``LLMTrainer``-like
    object (the seed's public functions take the trainer), or None."""
    if config is None or isinstance(config, TrainSettings):
        return config
    return TrainSettings.from_trainer(config)


# -- secrets ------------------------------------------------------------------
#: A setting whose name has one of these words (as a ``_``-separated part) holds a credential.
_SECRET_PATTERN = r"(^|_)(token|password|passwd|secret|api_?key|credentials?)($|_)"
#: Names of tokenizer special tokens, which are not credentials.
_SPECIAL_TOKENS = frozenset(
    f"{n}_token" for n in ("eos", "pad", "bos", "unk", "sep", "cls", "mask", "additional_special")
)


def is_secret_setting(name: str, value: t.Any) -> bool:
    """Whether the setting ``name=value`` carries a credential (``hub_token="hf_..."``).

    Only a non-empty string counts: ``use_auth_token=True`` names no secret.
    """
    import re

    lowered = str(name).lower()
    if lowered in _SPECIAL_TOKENS or not isinstance(value, str) or not value:
        return False
    return re.search(_SECRET_PATTERN, lowered) is not None


def secret_issues(
    settings: t.Mapping[str, t.Any],
    where: str,
    fix: str = "give it through the environment instead (`HF_TOKEN` for the Hugging Face hub)",
) -> t.List[str]:
    """One message per credential in ``settings`` (nested dicts too), naming the key, never the value.

    :param settings: Keyword arguments about to be stored with a component.
    :param where: Which field holds them (``training_kwargs``, ``model_kwargs``...).
    :param fix: What to do instead, after "Remove `<key>` and".
    """
    issues = []
    for k, v in sorted((settings or {}).items(), key=lambda kv: str(kv[0])):
        if isinstance(v, dict):
            issues += secret_issues(v, f"{where}['{k}']", fix)
        elif is_secret_setting(k, v):
            issues.append(
                f"`{where}` has `{k}`, a credential: components are stored in the database, where "
                f"anyone who can read it would find it. Remove `{k}` and {fix}."
            )
    return issues


def redact_uri(uri: t.Optional[str]) -> str:
    """``uri`` with its password (and any query string) replaced: safe for messages and logs.

    ``mongodb://user:pw@host/db?authSource=x`` -> ``mongodb://user:***@host/db?***``.
    """
    import re

    if not uri:
        return str(uri)
    out = re.sub(r"^([a-zA-Z][\w+.-]*://)([^:/@]*):[^@/]*@", r"\1\2:***@", str(uri))
    return re.sub(r"\?.*$", "?***", out)


class Secret:
    """A value that travels (pickled) but never shows: ``repr``/``str`` are redacted.

    Ray Train records ``train_loop_config`` as run metadata by walking dicts and calling
    ``str`` on everything else: a ``Secret`` appears there as ``<redacted>``.

    :param value: The value to carry (e.g. the datalayer config with its URI).
    """

    __slots__ = ("_value",)

    def __init__(self, value: t.Any):
        self._value = value

    def reveal(self) -> t.Any:
        """The carried value (only where it is used: rank 0's datalayer)."""
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self._value,))


# -- the best checkpoint ---------------------------------------------------------
def best_metric(metric_for_best_model: t.Optional[str], greater_is_better: t.Optional[bool]):
    """The metric that ranks checkpoints, as logged (``eval_...``), and its direction.

    The one place this is worked out (the plan, the callback that marks the best
    checkpoint, pruning and ``best`` in the CLI all call it). transformers prefixes the
    name with ``eval_``; without ``greater_is_better``, a loss is better lower and any
    other metric higher, as in transformers.

    :param metric_for_best_model: The setting (with or without ``eval_``); None: none.
    :param greater_is_better: The setting; None: from the name.
    :return: ``(name or None, greater_is_better)``.
    """
    if not metric_for_best_model:
        return None, False
    name = metric_for_best_model
    if not name.startswith("eval_"):
        name = f"eval_{name}"
    greater = not name.endswith("loss") if greater_is_better is None else greater_is_better
    return name, bool(greater)
