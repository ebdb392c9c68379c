"""Objects given by import path (``package.module:name``): stored as text, never pickled."""

from __future__ import annotations

import importlib
import typing as t


def looks_like_import_path(path: str) -> bool:
    """Whether ``path`` has the shape ``package.module:name`` (or ``package.module.name``)."""
    module, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return bool(module and name) and all(p.isidentifier() for p in [*module.split("."), *name.split(".")])


def import_path_of(obj: t.Any) -> t.Optional[str]:
    """``package.module:qualname`` of a class or function that can be imported again, else None
    (defined in ``__main__``, inside a function, or a lambda)."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def import_object(path: str) -> t.Any:
    """The object at ``path`` (``package.module:name`` or ``package.module.name``).

    :raises ImportError: or ``AttributeError`` when it cannot be imported.
    """
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    obj: t.Any = importlib.import_module(module_name)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
