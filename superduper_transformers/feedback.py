"""Feedback on a listener's outputs becomes training rows in a table (no export step).

An app logs one row per judgement in a feedback table (:func:`feedback_table`), naming
an output by its id in the listener's outputs table (``db[listener.outputs]``):

- thumbs: ``{"output": id, "thumbs": "up" | "down"}``;
- a preference: ``{"output": id, "rejected": other_id}`` (``output`` was preferred);
- a correction: ``{"output": id, "correction": "the right answer"}``.

:func:`training_rows` turns them into the rows an objective trains on and inserts them,
with ``_fold``, into a table a trainer's ``select`` reads:

- ``"sft"``: ``x``/``y``: thumbs up, preferred outputs, corrections;
- ``"dpo"``: ``prompt``/``chosen``/``rejected``: preferences, corrections (against the
  corrected output);
- ``"kto"``: ``prompt``/``completion``/``label``: every judgement, ``label`` True for good.

A preference or correction whose two texts are equal makes no DPO or KTO row.

Each row keeps ``feedback`` (the feedback row's id) and ``checkpoint`` (the checkpoint that
wrote the judged output, when the listener's model has ``record_checkpoint``): a feedback
row already converted into ``table`` is skipped, so the helper can run after every batch.
"""

from __future__ import annotations

import typing as t

from superduper_transformers.store.datalayer import ensure_table

OBJECTIVES = {
    "sft": {"x": "str", "y": "str"},
    "dpo": {"prompt": "str", "chosen": "str", "rejected": "str"},
    "kto": {"prompt": "str", "completion": "str", "label": "bool"},
}
#: Columns of a feedback table; a row fills ``output`` and one of the others.
FEEDBACK_FIELDS = {"output": "str", "thumbs": "str", "rejected": "str", "correction": "str"}


class FeedbackError(ValueError):
    """A feedback row that names an unknown output, or no judgement; an unknown objective."""


def feedback_table(db, name: str = "feedback") -> str:
    """Create the feedback table ``name`` (``FEEDBACK_FIELDS``) if it is missing.

    :param db: The datalayer.
    :param name: The table's name.
    """
    ensure_table(db, name, FEEDBACK_FIELDS)
    return name


def training_rows(
    db,
    listener,
    objective: str,
    table: str,
    feedback: str = "feedback",
    fold: str = "train",
) -> t.List[t.Dict[str, t.Any]]:
    """Insert into ``table`` the ``objective``'s rows made from the new feedback rows.

    :param db: The datalayer.
    :param listener: The ``Listener`` whose outputs the feedback judges (its ``key`` is the
        prompt column of its table).
    :param objective: ``"sft"``, ``"dpo"`` or ``"kto"``.
    :param table: The table of training rows (created with the objective's columns).
    :param feedback: The feedback table.
    :param fold: The ``_fold`` of the new rows (``"train"`` or ``"valid"``).
    :return: The rows inserted.
    :raises FeedbackError: an unknown objective, output id, or a row with no judgement.
    """
    if objective not in OBJECTIVES:
        raise FeedbackError(f"`objective` must be one of {sorted(OBJECTIVES)}, got {objective!r}.")
    training_table(db, table, objective)
    pid = db[feedback].primary_id.execute()
    done = {str(r["feedback"]) for r in db[table].select().execute()}
    new = [r for r in db[feedback].select().execute() if str(r[pid]) not in done]
    if not new:
        return []
    outputs = _judged_outputs(db, listener, new)
    rows = []
    for r in new:
        for row in _rows_of(objective, r, outputs):
            rows.append({**row, "feedback": str(r[pid]), "_fold": fold})
    if rows:
        db[table].insert(rows)
    return rows


def training_table(db, table: str, objective: str) -> None:
    """Create ``table`` with the columns of ``objective``'s rows if it is missing.

    :param db: The datalayer.
    :param table: The table of training rows.
    :param objective: ``"sft"``, ``"dpo"`` or ``"kto"``.
    """
    fields = {**OBJECTIVES[objective], "feedback": "str", "checkpoint": "str", "_fold": "str"}
    ensure_table(db, table, fields)


def _judged_outputs(db, listener, rows) -> t.Dict[str, t.Dict[str, t.Any]]:
    """``{output id: {"prompt", "answer", "checkpoint"}}`` for the outputs ``rows`` name."""
    ids = {str(r[k]) for r in rows for k in ("output", "rejected") if r.get(k)}
    out_table = db[listener.outputs]
    out_pid = out_table.primary_id.execute()
    found = {str(o[out_pid]): o for o in out_table.select().subset(list(ids))}
    missing = sorted(ids - set(found))
    if missing:
        raise FeedbackError(
            f"Feedback names output(s) {missing} that are not in `{listener.outputs}` (the "
            f"outputs of listener `{listener.identifier}`): `output`/`rejected` must be ids of "
            "that table's rows."
        )
    src_table = db[listener.select.table]
    src_pid = src_table.primary_id.execute()
    sources = {str(s[src_pid]): s for s in src_table.select().subset([o["_source"] for o in found.values()])}
    judged = {}
    for i, o in found.items():
        value = o[listener.outputs]
        answer, checkpoint = (
            (value["answer"], value["checkpoint"]) if isinstance(value, dict) else (value, None)
        )
        judged[i] = {
            "prompt": sources[str(o["_source"])][listener.key],
            "answer": answer,
            "checkpoint": checkpoint,
        }
    return judged


def _rows_of(objective: str, r, outputs) -> t.List[t.Dict[str, t.Any]]:
    """The training rows of one feedback row (none where the objective cannot use it)."""
    good = outputs[str(r["output"])]
    p, ckpt = good["prompt"], good["checkpoint"]
    if r.get("rejected"):
        bad = outputs[str(r["rejected"])]["answer"]
        pair = (good["answer"], bad)
    elif r.get("correction"):
        pair = (r["correction"], good["answer"])
    elif r.get("thumbs") in ("up", "down"):
        up = r["thumbs"] == "up"
        if objective == "kto":
            return [{"prompt": p, "completion": good["answer"], "label": up, "checkpoint": ckpt}]
        return [{"x": p, "y": good["answer"], "checkpoint": ckpt}] if objective == "sft" and up else []
    else:
        raise FeedbackError(
            f"Feedback row {dict(r)!r} judges nothing: set `thumbs` ('up' or 'down'), "
            "`rejected` (the id of the output it was preferred over) or `correction`."
        )
    chosen, rejected = pair
    if objective == "sft":
        return [{"x": p, "y": chosen, "checkpoint": ckpt}]
    if chosen == rejected:  # two equal answers carry no preference (DPO refuses them)
        return []
    if objective == "dpo":
        return [{"prompt": p, "chosen": chosen, "rejected": rejected, "checkpoint": ckpt}]
    return [
        {"prompt": p, "completion": chosen, "label": True, "checkpoint": ckpt},
        {"prompt": p, "completion": rejected, "label": False, "checkpoint": ckpt},
    ]
