"""Shadow mode: a candidate answers every new row beside the serving listener, unserved.

:func:`shadow` applies a second listener on the serving listener's table, key and
generation settings, whose ``LLM`` answers with a candidate (an alias, followed, or a
checkpoint). Its outputs go to its own outputs table, keyed like the serving one (one
row per input row, ``_source`` = the input row's id), with the checkpoint that wrote
each answer; what reads the serving listener's outputs never sees them.
:func:`side_by_side` stores the rows both answered side by side, as :func:`compare.compare`
does, so that a metric or :func:`compare.win_rate` scores them.
"""

from __future__ import annotations

import typing as t

from superduper_transformers import compare, promote
from superduper_transformers.checkpoint import load_checkpoint
from superduper_transformers.listener import LLMListener
from superduper_transformers.model import LLM

#: Settings of the serving ``LLM`` the shadow copies (generation and loading, not training).
COPIED = (
    "model_name_or_path",
    "model_kwargs",
    "tokenizer_kwargs",
    "prompt_template",
    "predict_kwargs",
    "max_batch_size",
)


class ShadowError(ValueError):
    """A serving listener whose model cannot be shadowed, or an unknown listener."""


def shadow(db, listener, candidate: t.Union[str, int] = "candidate", identifier: t.Optional[str] = None):
    """Apply a listener that answers the rows of ``listener`` with ``candidate``, unserved.

    Applying it answers the rows already in the table too (superduper's listeners do),
    then every inserted row.

    :param db: The datalayer.
    :param listener: The serving listener (or its identifier); its model is an ``LLM``.
    :param candidate: An alias of the trained model (followed: after it moves, the next
        rows are answered by its new checkpoint), or a checkpoint identifier or step.
    :param identifier: The shadow listener's identifier (default: ``<listener>-shadow``).
    :return: The applied ``LLMListener``; its outputs are ``db[shadow.outputs]``.
    :raises ShadowError: a listener whose model is not an ``LLM``, or one whose trainer
        changes how it predicts (chat format, quantization): the shadow would not answer
        as the serving model does.
    """
    serving = load_listener(db, listener)
    served = serving.model
    model = _trained_model(served)
    settings = {name: getattr(served, name) for name in COPIED}
    if candidate in promote.promotions(db, model).aliases:
        settings.update(alias=candidate, alias_model=model)
    else:
        settings["adapter_id"] = load_checkpoint(db, promote.find_checkpoint(db, model, candidate))
    name = identifier or f"{serving.identifier}-shadow"
    llm = LLM(f"{name}-model", record_checkpoint=True, **settings)
    out = LLMListener(name, model=llm, key=serving.key, select=serving.select)
    db.apply(out, force=True)
    return out


def side_by_side(
    db,
    listener,
    shadow_listener,
    target: t.Optional[str] = None,
    metric: t.Optional[str] = None,
    out: str = "compare",
) -> compare.Comparison:
    """Store the rows both listeners answered side by side (``a``: serving, ``b``: shadow).

    :param db: The datalayer.
    :param listener: The serving listener (or its identifier).
    :param shadow_listener: The shadow listener (or its identifier).
    :param target: The input table's column of expected answers (needed by ``metric``).
    :param metric: ``"module:function"``, called as ``f(predictions, targets)``.
    :param out: The side-by-side table (as :func:`compare.compare`'s).
    :return: The stored comparison; ``summary["checkpoint_a"/"checkpoint_b"]`` name the
        checkpoints that wrote each side (comma-separated when an alias moved meanwhile).
    """
    a, b = load_listener(db, listener), load_listener(db, shadow_listener)
    if metric and not target:
        raise compare.CompareError(f"`metric`={metric!r} needs `target`: a column of `{a.select.table}`.")
    answers = [_outputs(db, x) for x in (a, b)]
    table = db[a.select.table]
    pid = table.primary_id.execute()
    side, used = [], ([], [])
    for row in table.select().execute():
        both = [x.get(str(row[pid])) for x in answers]
        if None in both:
            continue  # not answered by both (yet)
        for seen, (_, checkpoint) in zip(used, both):
            seen.append(checkpoint)
        side.append(
            {
                "source": str(row[pid]),
                "prompt": str(row[a.key]),
                "answer_a": both[0][0],
                "answer_b": both[1][0],
                "target": str(row[target]) if target else "",
            }
        )
    checkpoints = [", ".join(sorted({c or "base" for c in seen})) for seen in used]
    return compare.store(db, _trained_model(a.model), checkpoints, side, metric=metric, out=out)


def load_listener(db, listener):
    """The listener itself, or the stored ``LLMListener``/``Listener`` of that identifier."""
    if not isinstance(listener, str):
        return listener
    for kind in ("LLMListener", "Listener"):
        if listener in db.show(kind):
            return db.load(kind, listener).setup()  # its model resolved (weights load lazily)
    raise ShadowError(f"No listener `{listener}` in the datalayer; its listeners: {_listeners(db)}.")


def _listeners(db) -> t.List[str]:
    return sorted(set(db.show("LLMListener")) | set(db.show("Listener")))


def _trained_model(served) -> str:
    """The model whose checkpoints ``served`` (an ``LLM``) answers with."""
    if not isinstance(served, LLM):
        raise ShadowError(f"The serving listener's model is a {type(served).__name__}, not an `LLM`.")
    trainer = served.trainer
    if trainer is not None and (
        getattr(trainer, "setup_chat_format", False) or getattr(trainer, "bits", None)
    ):
        raise ShadowError(
            f"LLM `{served.identifier}` predicts through its trainer's chat format or quantization, "
            "which a shadow cannot copy without the trainer. Serve through an LLM without a trainer "
            f"(`LLM(..., alias='prod', alias_model={served.identifier!r})`) and shadow that listener."
        )
    return served.alias_model or getattr(served.adapter_id, "model", None) or served.identifier


def _outputs(db, listener) -> t.Dict[str, t.Tuple[str, t.Optional[str]]]:
    """``{input row id: (answer stripped, checkpoint)}`` of a listener's outputs."""
    found = {}
    for row in db[listener.outputs].select().execute():
        value = row[listener.outputs]
        answer, checkpoint = (
            (value["answer"], value["checkpoint"]) if isinstance(value, dict) else (value, None)
        )
        found[str(row["_source"])] = (str(answer).strip(), checkpoint)
    return found
