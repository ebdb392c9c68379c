"""Objects given by import path (``package.module:name``): stored as text, never pickled."""

from __future__ import annotations

import importlib
import json
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


def checked_entry(
    entry: t.Mapping, name_key: str, where: str, error: t.Type[Exception], accepted: str
) -> t.Dict:
    """``{name_key: import path, "kwargs": {...}}`` as it is stored in the db: the path's shape
    checked and the keyword arguments plain JSON (callbacks, reward functions).

    :param entry: The user's entry (a dict).
    :param name_key: The key of the import path (``"class"``, ``"function"``).
    :param where: The field in messages (``"`callbacks[0]`"``).
    :param error: The error class to raise.
    :param accepted: What the field accepts, for messages.
    """
    unknown = set(entry) - {name_key, "kwargs"}
    path, kwargs = entry.get(name_key), entry.get("kwargs") or {}
    if (
        unknown
        or not isinstance(path, str)
        or not looks_like_import_path(path)
        or not isinstance(kwargs, dict)
    ):
        raise error(f"{where}={entry!r} is not {accepted}.")
    try:
        kwargs = json.loads(json.dumps(kwargs, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise error(
            f"{where}: its `kwargs` must be plain JSON (str, numbers, lists, dicts) as they are stored "
            f"in the db, got {kwargs!r} ({e})."
        ) from e
    return {name_key: path, "kwargs": kwargs}
