"""Reward functions of GRPO, given by import path and built where training runs.

Like the user's callbacks (:mod:`.callbacks`), a reward function is stored as JSON, never
pickled: ``{"function": "package.module:function", "kwargs": {...}}``. It is imported
and bound to its keyword arguments here, in the process that trains (this one, or each
Ray worker). trl calls it as ``f(prompts=[...], completions=[...], completion_ids=[...],
<other columns of the rows>=[...], trainer_state=..., **kwargs)`` and expects one number
(or None) per completion.
"""

from __future__ import annotations

import functools
import json
import math
import typing as t

from superduper_transformers._imports import checked_entry, import_object, import_path_of

#: What ``LLMTrainer(reward_funcs=[...])`` accepts, in words (for error messages).
ACCEPTED = (
    "an import path 'package.module:function', a dict {'function': 'package.module:function', "
    "'kwargs': {...JSON...}}, or an importable function"
)


class RewardError(ValueError):
    """A ``reward_funcs`` entry that cannot be stored, imported or called. Says the fix."""


def normalise_reward_funcs(value: t.Any) -> t.List[t.Dict[str, t.Any]]:
    """The stored form of ``reward_funcs``: ``[{"function": path, "kwargs": {...}}]``.

    Only the shape is checked (a trainer loaded where the package is missing must still
    load); :func:`load_reward_func` imports.

    :param value: None, or a list of entries (see :data:`ACCEPTED`).
    :raises RewardError: naming the entry and the fix.
    """
    if value is None:
        return []
    if isinstance(value, (str, dict)) or callable(value):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise RewardError(f"`reward_funcs` must be a list of entries ({ACCEPTED}), got {value!r}.")
    return [_normalise_one(i, entry) for i, entry in enumerate(value)]


def _normalise_one(i: int, entry: t.Any) -> t.Dict[str, t.Any]:
    where = f"`reward_funcs[{i}]`"
    if callable(entry) and not isinstance(entry, (str, dict)):
        path = import_path_of(entry)
        if path is None:
            raise RewardError(
                f"{where}: {entry!r} is defined in `__main__`, inside a function or is not a plain "
                "function, so it cannot be imported again by path where training runs. Move it to "
                "an importable module and give 'package.module:function'."
            )
        entry = {"function": path, "kwargs": {}}
    elif isinstance(entry, str):
        entry = {"function": entry, "kwargs": {}}
    elif not isinstance(entry, dict):
        raise RewardError(f"{where}={entry!r} is not {ACCEPTED}.")
    return checked_entry(entry, "function", where, RewardError, ACCEPTED)


def load_reward_func(path: str) -> t.Callable:
    """Import the function at ``path`` (``pkg.mod:func`` or ``pkg.mod.func``).

    :raises RewardError: when it cannot be imported or is not callable.
    """
    try:
        obj = import_object(path)
    except (ImportError, AttributeError) as e:
        raise RewardError(
            f"`reward_funcs`: cannot import {path!r} ({type(e).__name__}: {e}). Give the import path "
            "of a function, 'package.module:function', importable where training runs (on Ray, by "
            "every worker: install the package there or set PYTHONPATH)."
        ) from e
    if not callable(obj) or isinstance(obj, type):
        raise RewardError(
            f"`reward_funcs`: {path!r} is {obj!r}, not a function. Give a function that takes "
            "`prompts`, `completions` and `**kwargs` and returns one number per completion."
        )
    return obj


def build_reward_funcs(specs: t.Iterable[t.Tuple[str, str]]) -> t.List[t.Callable]:
    """The reward functions, imported and bound to their keyword arguments.

    :param specs: ``(import path, kwargs as a JSON string)`` pairs (``TrainSettings.reward_funcs``).
    """
    out = []
    for path, kwargs_json in specs:
        func = load_reward_func(path)
        kwargs = json.loads(kwargs_json)
        if kwargs:
            bound = functools.partial(func, **kwargs)
            functools.update_wrapper(bound, func)  # trl names its metrics by __name__
            func = bound
        out.append(func)
    return out


def check_reward_funcs(specs: t.Iterable[t.Tuple[str, str]], rows: t.Sequence[t.Mapping[str, t.Any]]):
    """Call each reward function once on ``rows`` (a prompt, a made-up completion and the
    other columns): it must return one number (or None) per row.

    Run by the plan, before anything is written: a reward function that fails here would
    otherwise fail at the first training step.

    :param specs: As :func:`build_reward_funcs`.
    :param rows: A couple of dataset rows (``prompt`` and the other columns).
    :raises RewardError: naming the function, what it returned and the fix.
    """
    specs = list(specs)
    funcs = build_reward_funcs(specs)
    prompts = [r["prompt"] for r in rows]
    completions = [" 1" if i % 2 else " a" for i in range(len(rows))]
    others = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    for (path, _), func in zip(specs, funcs):
        try:
            out = func(
                prompts=prompts,
                completions=completions,
                completion_ids=[[0] for _ in rows],
                trainer_state=None,
                log_extra=lambda *a, **k: None,
                log_metric=lambda *a, **k: None,
                **others,
            )
        except Exception as e:
            columns = ", ".join(f"`{k}`" for k in ["prompts", "completions", *others])
            raise RewardError(
                f"`reward_funcs`: {path!r} raised {type(e).__name__}: {e} when called on {len(rows)} "
                f"rows of the training data (keyword arguments {columns}, `completion_ids`, "
                "`trainer_state`). A reward function takes them as keyword arguments (accept "
                "`**kwargs`) and returns one number per completion."
            ) from e
        try:
            rewards = list(out)
        except TypeError:
            rewards = None
        if rewards is None or len(rewards) != len(rows):
            got = f"{len(rewards)} values" if rewards is not None else repr(out)[:60]
            raise RewardError(
                f"`reward_funcs`: {path!r} returned {got} for {len(rows)} completions: it must return "
                "a list with one reward (a number, or None) per completion."
            )
        bad = [r for r in rewards if r is not None and not _is_number(r)]
        if bad:
            raise RewardError(
                f"`reward_funcs`: {path!r} returned {bad[0]!r} among its rewards: each must be a "
                "number (or None to skip the completion)."
            )


def _is_number(value: t.Any) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
