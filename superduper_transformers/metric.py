"""``ImportedMetric``: a metric for ``Validation(metrics=[...])`` stored as its import path.

superduper's own ``Metric`` stores its function as a dill blob in the artifact store, and
every set-up of the model unpickles it: whoever can write that file runs code in every
process that loads the model. An ``ImportedMetric`` is stored as JSON (the function's
import path and keyword arguments) and imported where it runs, as
``LLMTrainer(callbacks=...)`` are; an ``LLM`` refuses children stored pickled
(:mod:`superduper_transformers.store.pickled`).
"""

from __future__ import annotations

import json
import typing as t

from superduper import Component

from superduper_transformers._imports import import_object, import_path_of, looks_like_import_path


class MetricError(ValueError):
    """An ``ImportedMetric`` that cannot be stored or imported. The message says how to fix it."""


class ImportedMetric(Component):
    """A metric on generations, given by import path: ``function(predictions, targets, **kwargs)``.

    ``LLM.validation = Validation("v", key=("x", "y"), metrics=[ImportedMetric("exact",
    function="mypkg.metrics:exact_match")], datasets=[Dataset("dev", select=db["dev"].select())])``

    :param function: ``'package.module:function'`` (or an importable function, stored as its
        path), called with the stripped generations and the targets; returns a number.
    :param kwargs: Keyword arguments for ``function``, as JSON.
    """

    function: str = ""
    kwargs: t.Dict = None  # type: ignore[assignment]

    def postinit(self):
        """Store the function as its import path and check the shape (not the import: a
        model loaded where the package is missing must still load)."""
        where = f"ImportedMetric `{self.identifier}`"
        if callable(self.function):
            path = import_path_of(self.function)
            if path is None:
                raise MetricError(
                    f"{where}: `function`={self.function!r} is defined in `__main__`, inside a function "
                    "or as a lambda, so it cannot be imported again where the model is validated. Move "
                    "it to an importable module and give it, or its path 'package.module:function'."
                )
            self.function = path
        if not isinstance(self.function, str) or not looks_like_import_path(self.function):
            raise MetricError(
                f"{where}: `function`={self.function!r} is not an import path: give "
                "'package.module:function' (the function is imported where the model is validated)."
            )
        try:
            self.kwargs = json.loads(json.dumps(dict(self.kwargs or {}), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise MetricError(
                f"{where}: `kwargs`={self.kwargs!r} must be plain JSON (str, numbers, lists, dicts): "
                f"it is stored in the db, never pickled ({e})."
            ) from e
        super().postinit()

    def load(self) -> t.Callable:
        """The function, imported.

        :raises MetricError: naming the metric, the path and the fix.
        """
        try:
            function = import_object(self.function)
        except (ImportError, AttributeError) as e:
            raise MetricError(
                f"ImportedMetric `{self.identifier}`: cannot import `function`={self.function!r} "
                f"({type(e).__name__}: {e}). Install its package where the model is validated, or "
                "fix the path ('package.module:function')."
            ) from e
        if not callable(function):
            raise MetricError(
                f"ImportedMetric `{self.identifier}`: `function`={self.function!r} is {function!r}, "
                "not a function."
            )
        return function

    def __call__(self, predictions: t.Sequence[str], targets: t.Sequence[t.Any]) -> t.Any:
        """Score ``predictions`` against ``targets``.

        :param predictions: The model's generations.
        :param targets: The expected outputs.
        """
        return self.load()(predictions, targets, **self.kwargs)
