"""Queries of the plugin's stored records, written once and read by every layer.

The record types themselves (``Checkpoint``, ``TrainingRun``, ``Promotions``) are
components whose import paths are stored in the database; the store reads them by their
component name, so it needs no import of the classes (it sits below them).
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer


def run_identifiers(
    db: Datalayer, model: t.Optional[str] = None, state: t.Optional[str] = None
) -> t.List[str]:
    """Identifiers of the ``TrainingRun`` rows of ``model`` (None: every model), in a
    ``state`` (None: any), sorted; empty when no training ever ran in this db.

    :param db: The datalayer.
    :param model: The ``LLM``'s identifier.
    :param state: ``running``, ``finished`` or ``abandoned``.
    """
    from superduper.base import exceptions

    from superduper_transformers.store import sql_writes

    match = {k: v for k, v in (("model", model), ("state", state)) if v is not None}
    # Asked at every setup of a model: one SELECT on SQLite, superduper's query elsewhere.
    stored = sql_writes.select_rows(db, "TrainingRun", ["identifier"], match) if match else None
    if stored is not None:
        return sorted({r["identifier"] for r in stored})
    table = db["TrainingRun"]
    conditions = []
    if model is not None:
        conditions.append(table["model"] == model)
    if state is not None:
        conditions.append(table["state"] == state)
    query = table.filter(*conditions) if conditions else table
    try:
        rows = query.select("identifier").execute()
    except exceptions.NotFound:
        return []
    return sorted({r["identifier"] for r in rows})


def runs(db: Datalayer, model: t.Optional[str] = None, state: t.Optional[str] = None) -> t.List[t.Any]:
    """The ``TrainingRun`` components of ``model`` (see :func:`run_identifiers`), oldest first."""
    loaded = [db.load("TrainingRun", i) for i in run_identifiers(db, model, state)]
    return sorted(loaded, key=lambda r: r.started_at or 0)
