"""The YAML config of ``train``: a validated dataclass, checked whole before anything runs.

    db: sqlite:////abs/demo.db          # optional: --db / --data win; default the main job's db
    model:
      identifier: tiny-lora
      model_name_or_path: /path/to/model
      prompt_template: "{input}"
      predict_kwargs: {max_new_tokens: 4}
    data:
      table: facts
      key: [x, y]                       # (prompt, completion) columns, or one text column;
                                        # [prompt, chosen, rejected] for dpo/orpo, ...
      filter: {lang: en}                # optional: equality filters on other columns
      # or, instead of table/filter, several selections mixed with weights:
      # mix: [{table: domain, weight: 0.7}, {table: general, filter: {lang: en}, weight: 0.3}]
    trainer:                            # LLMTrainer fields + any field of the objective's trl config
      objective: sft                    # or dpo, kto, orpo, grpo (docs/objectives.md)
      lora_r: 16
      learning_rate: 3e-3
      max_steps: 300

``key=value`` overrides use dotted keys (``trainer.learning_rate=1e-3``); values are
YAML scalars. Every problem (unknown keys with the closest names, wrong types, bad
values) is reported at once, each naming the key, the value and the fix.
"""

from __future__ import annotations

import dataclasses as dc
import difflib
import re
import types
import typing as t

import yaml

from superduper_transformers.cli.common import CliError


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: PyYAML (YAML 1.1) reads ``3e-3`` as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> t.Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise CliError(f"{where} is not valid YAML: {e}") from e


@dc.dataclass
class ModelSection:
    """The ``LLM`` to train.

    :param identifier: Name of the model in the database (runs and checkpoints carry it).
    :param model_name_or_path: Folder of a Hugging Face causal LM (or an offline-cached hub id).
    :param prompt_template: Template with ``{input}``, used in training and prediction.
    :param predict_kwargs: ``generate`` keywords (``max_new_tokens``, ...).
    :param model_kwargs: ``from_pretrained`` keywords of the model.
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    """

    identifier: str
    model_name_or_path: str
    prompt_template: str = "{input}"
    predict_kwargs: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    model_kwargs: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    tokenizer_kwargs: t.Dict[str, t.Any] = dc.field(default_factory=dict)


@dc.dataclass
class DataSection:
    """Where the rows are: a table, its columns, an optional filter (or several tables
    mixed with weights). Rows need ``_fold`` (``train``/``valid``), as ``import-data`` writes it.

    :param table: The table of rows (or give ``mix``).
    :param key: The columns the objective reads: (prompt, completion) or one column of whole
        texts (sft); (prompt, chosen, rejected) (dpo, orpo); (prompt, completion, label) (kto);
        the prompt column, then columns for the reward functions (grpo).
    :param filter: ``{column: value}``: train only on the rows with these values.
    :param mix: Instead of ``table``: selections mixed with weights, each ``{table: NAME,
        weight: NUMBER}`` with an optional ``filter`` (``LLMTrainer(mix=...)``; the
        trainer's ``mix_strategy`` says when the mix ends).
    """

    key: t.Union[str, t.List[str]]
    table: t.Optional[str] = None
    filter: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    mix: t.Optional[t.List[t.Dict[str, t.Any]]] = None

    def selections(self) -> t.List[t.Tuple[str, t.Dict[str, t.Any], t.Optional[float]]]:
        """``(table, filter, weight)`` of each selection (one, weight None, without ``mix``)."""
        if self.mix is None:
            return [(self.table, dict(self.filter), None)]
        return [(e["table"], dict(e.get("filter") or {}), e["weight"]) for e in self.mix]


def mix_issues(data: t.Mapping[str, t.Any]) -> t.List[str]:
    """Problems of ``data.table`` / ``data.mix`` (the raw ``data:`` mapping): exactly one
    given, each entry of the mix well formed."""
    from superduper_transformers.store.mix import weight_issue

    mix = data.get("mix")
    if data.get("table") is None and mix is None:
        return [f"`data.table` is required: {_help(DataSection, 'table')}"]
    issues = []
    if data.get("table") is not None and mix is not None:
        issues.append("`data.table` and `data.mix` both give the rows: keep one.")
    if not isinstance(mix, list):
        return issues  # no mix, or not a list (the type check names it)
    if data.get("filter"):
        issues.append("`data.filter` filters `data.table`; with `data.mix` give each entry its own `filter`.")
    if not mix:
        issues.append(
            "`data.mix` must list the tables to mix, e.g. "
            "[{table: domain, weight: 0.7}, {table: general, weight: 0.3}]."
        )
    for i, entry in enumerate(mix):
        where = f"data.mix[{i}]"
        if not isinstance(entry, dict):
            issues.append(f"`{where}` must be a mapping {{table: NAME, weight: NUMBER}}, got {entry!r}.")
            continue
        for key in sorted(set(entry) - {"table", "filter", "weight"}):
            issues.append(unknown_key_issue(f"{where}.", str(key), ("table", "filter", "weight")))
        if not isinstance(entry.get("table"), str):
            issues.append(f"`{where}.table` must name a table, got {entry.get('table')!r}.")
        if not isinstance(entry.get("filter", {}), dict):
            issues.append(f"`{where}.filter` must be a mapping {{column: value}}, got {entry['filter']!r}.")
        issue = weight_issue(f"`{where}.weight`", entry.get("weight"))
        if issue:
            issues.append(issue)
    return issues


@dc.dataclass
class TrainConfig:
    """A ``train`` config file.

    :param model: The model (:class:`ModelSection`).
    :param data: The rows (:class:`DataSection`).
    :param trainer: ``LLMTrainer`` fields (``use_lora``, ``lora_r``, ``bits``, ...) and any
        ``TrainingArguments``/``SFTConfig`` field (``learning_rate``, ``max_steps``, ...).
    :param db: Datalayer URI (``--db`` wins; default: the main job's SQLite db).
    :param artifact_store: ``filesystem:///abs/path`` (``--artifact-store`` wins).
    """

    model: ModelSection
    data: DataSection
    trainer: t.Dict[str, t.Any] = dc.field(default_factory=dict)
    db: t.Optional[str] = None
    artifact_store: t.Optional[str] = None


# -- overrides --------------------------------------------------------------
def apply_overrides(raw: t.Dict[str, t.Any], overrides: t.Sequence[str]) -> t.List[str]:
    """Set ``a.b.c=value`` items in ``raw`` (values parsed as YAML scalars); return problems."""
    issues = []
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or not name or any(not part for part in name.split(".")):
            issues.append(
                f"override {item!r} is not `key=value` (dotted keys, e.g. `trainer.learning_rate=1e-3`)."
            )
            continue
        try:
            value = yaml.load(text, Loader=_Loader) if text else ""
        except yaml.YAMLError as e:
            issues.append(f"override {item!r}: the value is not a YAML scalar ({e.problem}).")
            continue
        node = raw
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                issues.append(f"override {item!r}: `{'.'.join(parts[: i + 1])}` is not a section.")
                break
        else:
            node[parts[-1]] = value
    return issues


# -- type checks ------------------------------------------------------------
_UNIONS = (t.Union, types.UnionType)


def type_ok(value: t.Any, annotation: t.Any) -> bool:
    """Whether a YAML value fits a (simple) annotation; unknown shapes are accepted
    (transformers' and trl's own checks, run in the preflight, judge them)."""
    if annotation is t.Any or annotation is dc.MISSING:
        return True
    origin = t.get_origin(annotation)
    if origin in _UNIONS:
        return any(type_ok(value, a) for a in t.get_args(annotation))
    if origin is t.Literal:
        return value in t.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if annotation in (dict, t.Dict) or origin is dict:
        return isinstance(value, dict)
    if annotation in (list, t.List) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    return True


def type_name(annotation: t.Any) -> str:
    """``int``, ``float or None``, ``list``: for messages."""
    if t.get_origin(annotation) in _UNIONS:
        return " or ".join(type_name(a) for a in t.get_args(annotation))
    if annotation is type(None):
        return "None"
    origin = t.get_origin(annotation) or annotation
    return getattr(origin, "__name__", str(annotation))


def unknown_key_issue(where: str, key: str, valid: t.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(valid), n=3)
    hint = f" Did you mean {', '.join(f'`{where}{c}`' for c in close)}?" if close else ""
    return f"`{where}{key}` is not a known setting.{hint}"


def check_section(cls, raw: t.Any, where: str, issues: t.List[str]) -> t.Optional[t.Any]:
    """Build dataclass ``cls`` from ``raw``, adding every problem to ``issues``."""
    if not isinstance(raw, dict):
        issues.append(f"`{where.rstrip('.') or 'the config'}` must be a mapping, got {raw!r}.")
        return None
    hints = t.get_type_hints(cls)
    fields = {f.name: f for f in dc.fields(cls)}
    before = len(issues)
    ok = {}
    for key, value in raw.items():
        if key not in fields:
            issues.append(unknown_key_issue(where, str(key), fields))
        elif dc.is_dataclass(hints[key]):
            ok[key] = check_section(hints[key], value, f"{where}{key}.", issues)
        elif not type_ok(value, hints[key]):
            issues.append(f"`{where}{key}` must be {type_name(hints[key])}, got {value!r}.")
        else:
            ok[key] = value
    for name, f in fields.items():
        if name not in raw and f.default is dc.MISSING and f.default_factory is dc.MISSING:
            issues.append(f"`{where}{name}` is required: {_help(cls, name)}")
    return cls(**ok) if len(issues) == before else None


def _help(cls, name: str) -> str:
    """The ``:param name:`` line of ``cls``'s docstring."""
    m = re.search(rf":param {name}: (.+)", cls.__doc__ or "")
    return m.group(1).strip() if m else ""


def load_config(
    path: str, overrides: t.Sequence[str] = ()
) -> t.Tuple[t.Optional[TrainConfig], t.Dict[str, t.Any], t.List[str]]:
    """Read ``path``, apply ``overrides``; return the config (None if unusable), the raw
    mapping and the problems."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise CliError(f"cannot read the config {path}: {e.strerror}.") from e
    raw = parse_yaml(text, f"the config {path}")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CliError(f"the config {path} must be a mapping (model:, data:, trainer:), got {raw!r}.")
    issues = apply_overrides(raw, overrides)
    if isinstance(raw.get("data"), dict):
        issues += mix_issues(raw["data"])
    config = check_section(TrainConfig, raw, "", issues)
    if config is not None and isinstance(config.data.key, list) and not config.data.key:
        issues.append(
            "`data.key` must name the columns the objective reads: one column or [prompt, completion] "
            "(sft), [prompt, chosen, rejected] (dpo, orpo), [prompt, completion, label] (kto), "
            "[prompt, ...] (grpo)."
        )
    return config, raw, issues
