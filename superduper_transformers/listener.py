"""``LLMListener``: a superduper ``Listener`` that names its outputs once per run, not per row.

superduper's ``Listener.run`` writes each output row under ``self.outputs``, a name that
hashes the whole listener (its model, key and query) and is recomputed for every row.
Per row that cost as much as generating the answer with a small model. The name cannot
change during a run, so this listener computes it once at the start of each run. Same
arguments, outputs and tables as ``Listener``.
"""

from __future__ import annotations

import typing as t

from superduper import Listener
from superduper.base.annotations import trigger


class LLMListener(Listener):
    """A ``Listener`` (same arguments) that computes its outputs' name once per run.

    ``LLMListener("answers", model=llm, key="question", select=db["questions"].select())``
    """

    # The same trigger as ``Listener.run`` (superduper finds triggers by this decorator).
    @trigger("apply", "insert", "update", requires="select", outputs="outputs")
    def run(self, ids: t.Optional[t.List[str]] = None):
        """Answer the rows ``ids`` (all rows without an output when None) and store the outputs.

        :param ids: Primary ids of the new rows.
        """
        self._run_predict_id = Listener.predict_id.fget(self)
        try:
            return Listener.run(self, ids=ids)
        finally:
            self._run_predict_id = None

    @property
    def predict_id(self) -> str:
        """``Listener.predict_id``; during a run, the value computed at its start."""
        return getattr(self, "_run_predict_id", None) or Listener.predict_id.fget(self)
