"""Availability checks for optional dependencies (import them only when asked for)."""

from __future__ import annotations

import functools
import importlib.util


@functools.cache
def is_available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, extra: str, feature: str) -> None:
    """Raise an ``ImportError`` naming the pip extra when ``module`` is missing.

    :param module: Import name, e.g. ``"bitsandbytes"``.
    :param extra: The extra of this package that installs it, e.g. ``"quant"``.
    :param feature: What needs it, e.g. ``"bits=4 (QLoRA)"``.
    """
    if not is_available(module):
        raise ImportError(
            f"{feature} needs `{module}`, which is not installed. Install it with "
            f"`pip install 'superduper_transformers[{extra}]'`."
        )
