"""Weights loaded in this process, kept for the next copy of the same model.

superduper builds a new copy of a component from its row for every job (its component
cache is off by default and does not cover a ``Listener``'s model): without this, an
``LLM`` under a ``Listener`` loaded its weights again on every insert. Copies whose
weights come from the same place (:meth:`LLM._weights_key`) share one loaded model.
Only the last :data:`MAX_LOADED` are kept (e.g. ``prod`` and a shadow candidate).
"""

from __future__ import annotations

import threading
import typing as t
from collections import OrderedDict

#: How many loaded models a process keeps at most.
MAX_LOADED = 2

_loaded: OrderedDict[t.Hashable, t.Any] = OrderedDict()
_lock = threading.Lock()


def get_or_load(key: t.Hashable, load: t.Callable[[], t.Any]) -> t.Any:
    """The model loaded for ``key``, loading it with ``load()`` the first time.

    :param key: What the weights were loaded from (paths, checkpoint, settings).
    :param load: Loads them (e.g. returns ``(model, tokenizer)``).
    """
    with _lock:
        if key in _loaded:
            _loaded.move_to_end(key)
            return _loaded[key]
    value = load()  # outside the lock: a load takes seconds
    with _lock:
        _loaded[key] = value
        _loaded.move_to_end(key)
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
    return value


def forget(key: t.Optional[t.Hashable] = None) -> None:
    """Drop the model loaded for ``key`` (all of them with None), freeing its memory once
    no copy uses it.

    :param key: As given to :func:`get_or_load`.
    """
    with _lock:
        if key is None:
            _loaded.clear()
        else:
            _loaded.pop(key, None)
