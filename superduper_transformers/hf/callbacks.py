"""User ``TrainerCallback``s given by import path, and early stopping.

A trainer's fields are stored in the db as JSON and nothing of the plugin is ever
pickled, so a callback is stored as what rebuilds it: ``{"class": "pkg.mod:Cls",
"kwargs": {...}}`` (JSON keyword arguments). It is imported and instantiated where
the training runs (this process, or each Ray worker), each time a training starts.
"""

from __future__ import annotations

import json
import typing as t

from superduper_transformers._imports import checked_entry, import_object

#: What ``LLMTrainer(callbacks=[...])`` accepts, in words (for error messages).
ACCEPTED = (
    "an import path 'package.module:ClassName', a dict {'class': 'package.module:ClassName', "
    "'kwargs': {...JSON...}}, or an importable TrainerCallback subclass"
)


class CallbackError(ValueError):
    """A ``callbacks`` entry that cannot be stored or built. The message says how to fix it."""


def class_path(cls: type) -> str:
    """``package.module:ClassName`` of ``cls``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def normalise_callbacks(value: t.Any) -> t.List[t.Dict[str, t.Any]]:
    """The stored form of ``LLMTrainer(callbacks=...)``: ``[{"class": path, "kwargs": {...}}]``.

    Only the shape is checked here (a trainer loaded from the db on a machine without the
    callback's package must still load); :func:`build_callbacks` imports them.

    :param value: None, or a list of entries (see :data:`ACCEPTED`).
    :raises CallbackError: naming the entry and the fix.
    """
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise CallbackError(f"`callbacks` must be a list of entries ({ACCEPTED}), got {value!r}.")
    return [_normalise_one(i, entry) for i, entry in enumerate(value)]


def _normalise_one(i: int, entry: t.Any) -> t.Dict[str, t.Any]:
    where = f"`callbacks[{i}]`"
    if isinstance(entry, type):
        if "<locals>" in entry.__qualname__ or entry.__module__ == "__main__":
            raise CallbackError(
                f"{where}: the class {entry.__qualname__} is defined in `__main__` or inside a function, "
                "so it cannot be imported again by path where training runs. Move it to an importable module."
            )
        entry = {"class": class_path(entry), "kwargs": {}}
    elif isinstance(entry, str):
        entry = {"class": entry, "kwargs": {}}
    elif not isinstance(entry, dict):
        raise CallbackError(
            f"{where} is a {type(entry).__name__} instance: callbacks are stored as JSON, never "
            f"pickled, so give {ACCEPTED} (e.g. {{'class': '{class_path(type(entry))}', "
            "'kwargs': {...}}), and it is built where training runs."
        )
    return checked_entry(entry, "class", where, CallbackError, ACCEPTED)


def load_callback_class(path: str) -> type:
    """Import the ``TrainerCallback`` subclass at ``path`` (``pkg.mod:Cls`` or ``pkg.mod.Cls``).

    :raises CallbackError: when it cannot be imported or is not a ``TrainerCallback``.
    """
    from transformers import TrainerCallback

    try:
        obj = import_object(path)
    except (ImportError, AttributeError) as e:
        raise CallbackError(
            f"`callbacks`: cannot import {path!r} ({type(e).__name__}: {e}). Give the import path of a "
            "TrainerCallback subclass, 'package.module:ClassName', importable where training runs "
            "(on Ray, by every worker: install the package there or set PYTHONPATH)."
        ) from e
    if not (isinstance(obj, type) and issubclass(obj, TrainerCallback)):
        raise CallbackError(
            f"`callbacks`: {path!r} is {obj!r}, not a subclass of transformers.TrainerCallback."
        )
    return obj


def build_callbacks(specs: t.Iterable[t.Tuple[str, str]]) -> t.List[t.Any]:
    """Instantiate the user's callbacks (one new instance per training).

    :param specs: ``(import path, kwargs as a JSON string)`` pairs (``TrainSettings.callbacks``).
    :raises CallbackError: naming the callback and the fix.
    """
    out = []
    for path, kwargs_json in specs:
        cls = load_callback_class(path)
        kwargs = json.loads(kwargs_json)
        try:
            out.append(cls(**kwargs))
        except TypeError as e:
            raise CallbackError(f"`callbacks`: {path!r} cannot be built with kwargs {kwargs!r}: {e}.") from e
    return out


def early_stopping_callback(patience: int, threshold: float):
    """transformers' ``EarlyStoppingCallback``: stop after ``patience`` evaluations without
    an improvement of ``metric_for_best_model`` larger than ``threshold``."""
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=patience, early_stopping_threshold=threshold)
