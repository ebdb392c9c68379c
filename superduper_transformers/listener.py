"""``LLMListener``: a superduper ``Listener`` with the same outputs, off superduper's slow paths.

superduper's ``Listener.run`` names each output row's column with ``self.outputs``, a hash
of the whole listener (its model, key and query) recomputed for every row: per row that
cost as much as generating the answer with a small model. It reads the new rows with
``select.subset(ids)`` (every column, decoded; on mongomock a list scan per document) and
writes the outputs through superduper's insert (schema reads, encoding, on SQLite an ibis
memtable). This listener names the outputs once per run and, where the backend allows
(``store/listener_rows.py``: SQLite, MongoDB, mongomock; a plain ``select()``, one text
key, ``str``/``json`` outputs, no ``flatten``), reads the key column and writes the output
rows through the backend's own driver: the same table, columns and ids as superduper's.
Anything else runs superduper's ``Listener.run``. Same arguments, outputs and tables as
``Listener``.
"""

from __future__ import annotations

import typing as t

from superduper import Listener
from superduper.base.annotations import trigger

from superduper_transformers.store import listener_rows


class LLMListener(Listener):
    """A ``Listener`` (same arguments, same outputs) that answers new rows with less overhead.

    ``LLMListener("answers", model=llm, key="question", select=db["questions"].select())``
    """

    # The same trigger as ``Listener.run`` (superduper finds triggers by this decorator).
    @trigger("apply", "insert", "update", requires="select", outputs="outputs")
    def run(self, ids: t.Optional[t.List[str]] = None):
        """Answer the rows ``ids`` (all rows without an output when None) and store the outputs.

        :param ids: Primary ids of the new rows.
        :return: the ids of the output rows (superduper hands them to downstream listeners).
        """
        self._run_predict_id = Listener.predict_id.fget(self)
        try:
            if self.flatten or self.model.signature != "singleton":
                return Listener.run(self, ids=ids)
            self._check_signature()
            if ids is None:
                ids = self.select.missing_outputs(self.predict_id)
            if not ids:
                return None
            inputs = listener_rows.read_inputs(self.db, self.select, self.key, ids)
            if inputs is None:
                return Listener.run(self, ids=ids)
            if not inputs:
                return None
            outputs = self.model.predict_batches([value for _, value in inputs])
            pairs = [(i, out) for (i, _), out in zip(inputs, outputs)]
            written = listener_rows.write_outputs(self.db, self.outputs, self.model.datatype, pairs)
            return self._insert(pairs) if written is None else written
        finally:
            self._run_predict_id = None

    def _insert(self, pairs):
        # superduper's own rows and insert (``Listener.run``), for the backends written nowhere else.
        backend = self.db.databackend
        output_pid = self.db[self.outputs].primary_id.execute()
        rows = [
            {
                backend.id_field: backend.random_id(),
                "_source": backend.to_id(i),
                output_pid: i,
                self.outputs: out,
            }
            for i, out in pairs
        ]
        return self.db[self.outputs].insert(rows)

    @property
    def predict_id(self) -> str:
        """``Listener.predict_id``; during a run, the value computed at its start."""
        return getattr(self, "_run_predict_id", None) or Listener.predict_id.fget(self)
