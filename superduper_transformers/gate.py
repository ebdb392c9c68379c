"""The promotion gate of a training round: a candidate replaces ``prod`` only when it is not worse.

:func:`gate` compares the candidate checkpoint with the one an alias (``prod``) points at,
on the same rows and metric (:func:`superduper_transformers.compare.compare`), and moves
the alias to the candidate only when ``score(candidate) >= score(prod) - margin`` (a
negative margin demands an improvement). Every decision is an entry of the model's
promotion history (``promote``, or ``reject`` with the alias unmoved; both scores, the
margin and the comparison with it) and a row of the table ``rounds``:
the comparison, both checkpoints, both scores, the margin and ``promoted`` or ``rejected``;
a rejected candidate stays stored for inspection (pruning may remove it later).
"""

from __future__ import annotations

import time
import typing as t

from superduper_transformers import promote
from superduper_transformers.compare import compare
from superduper_transformers.store.datalayer import ensure_table

ROUNDS_TABLE = "rounds"
ROUND_FIELDS = {
    "model": "str",
    "comparison": "str",
    "candidate": "str",
    "prod": "str",
    "score_candidate": "float",
    "score_prod": "float",
    "margin": "float",
    "decision": "str",
    "time": "float",
}


def not_worse(candidate: float, prod: float, margin: float) -> bool:
    """Whether a candidate scoring ``candidate`` may replace one scoring ``prod`` (higher is better).

    :param candidate: The candidate's score.
    :param prod: The score of the checkpoint in production.
    :param margin: How much worse the candidate may be (negative: how much better it must be).
    """
    return candidate >= prod - margin


def gate(
    db,
    model: str,
    candidate: t.Union[str, int],
    table: str,
    key: str,
    target: str,
    metric: str,
    margin: float = 0.0,
    alias: str = "prod",
    by: str = "gate",
) -> t.Dict[str, t.Any]:
    """Compare ``candidate`` with the checkpoint ``alias`` points at; promote it if not worse.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param candidate: Checkpoint identifier or step of the candidate.
    :param table: The validation rows.
    :param key: The column of prompts.
    :param target: The column of expected answers.
    :param metric: ``"module:function"``, ``f(predictions, targets)``, higher is better.
    :param margin: How much worse than ``prod`` the candidate may score and still be promoted.
    :param alias: The alias that serves (moved on promotion).
    :param by: Who decides, for the promotion history.
    :return: The row written to ``rounds``.
    """
    prod = promote.resolve_alias(db, model, alias).identifier
    result = compare(db, model, alias, candidate, table=table, key=key, target=target, metric=metric)
    s = result.summary
    promoted = not_worse(s["score_b"], s["score_a"], margin)
    note = {
        "score_candidate": s["score_b"],
        "score_prod": s["score_a"],
        "margin": float(margin),
        "metric": metric,
        "comparison": s["comparison"],
    }
    if promoted:
        promote.promote(db, model, s["checkpoint_b"], alias=alias, by=by, note=note)
    else:
        promote.record_rejection(db, model, s["checkpoint_b"], alias, by=by, note=note)
    row = {
        "model": model,
        "comparison": s["comparison"],
        "candidate": s["checkpoint_b"],
        "prod": prod,
        "score_candidate": s["score_b"],
        "score_prod": s["score_a"],
        "margin": float(margin),
        "decision": "promoted" if promoted else "rejected",
        "time": time.time(),
    }
    ensure_table(db, ROUNDS_TABLE, ROUND_FIELDS)
    db[ROUNDS_TABLE].insert([row])
    return row
