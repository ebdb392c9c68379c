"""Compare two checkpoints (or aliases) of a model on the same rows, side by side in a table.

:func:`compare` answers every selected row with checkpoint ``a`` and with checkpoint ``b``
and stores one row per input in the table ``out``: ``comparison`` (the run's id),
``source`` (the input row's id), ``prompt``, ``answer_a``, ``answer_b``, ``target``. One
row per comparison goes to the table ``comparisons``: the model, both checkpoints, the
scores and how they were computed. Scores are either

- a metric: ``"module:function"`` called as ``f(predictions, targets)`` (the answers
  stripped of surrounding whitespace) when the rows have a target column, or
- a win rate from judgements (:func:`win_rate`): rows ``{"output": <id of a row of out>,
  "preferred": "a" | "b" | "tie"}`` in a feedback table, counted once people judged.
"""

from __future__ import annotations

import dataclasses as dc
import importlib
import time
import typing as t
import uuid

from superduper_transformers import promote
from superduper_transformers.checkpoint import load_checkpoint
from superduper_transformers.store.datalayer import ensure_table

SUMMARY_TABLE = "comparisons"
SIDE_BY_SIDE = {
    "comparison": "str",
    "source": "str",
    "prompt": "str",
    "answer_a": "str",
    "answer_b": "str",
    "target": "str",
}
SUMMARY = {
    "comparison": "str",
    "model": "str",
    "checkpoint_a": "str",
    "checkpoint_b": "str",
    "table": "str",
    "rows": "int",
    "score": "str",
    "score_a": "float",
    "score_b": "float",
    "time": "float",
}


class CompareError(ValueError):
    """A metric path that does not import, a missing column, or unknown judgements."""


@dc.dataclass
class Comparison:
    """What :func:`compare` stored: ``rows`` are the rows of ``out``, ``summary`` the row of
    ``comparisons``."""

    out: str
    rows: t.List[t.Dict[str, t.Any]]
    summary: t.Dict[str, t.Any]


def load_metric(path: str) -> t.Callable:
    """The function ``"module:function"`` names.

    :param path: e.g. ``"my_metrics:exact_match"``.
    """
    module, _, name = path.partition(":")
    if not module or not name:
        raise CompareError(f"`metric`={path!r} must be 'module:function', e.g. 'my_metrics:exact_match'.")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise CompareError(f"`metric`={path!r} does not import ({type(e).__name__}: {e}).") from e


def compare(
    db,
    model: str,
    a: t.Union[str, int],
    b: t.Union[str, int],
    table: str,
    key: str,
    target: t.Optional[str] = None,
    metric: t.Optional[str] = None,
    out: str = "compare",
    limit: t.Optional[int] = None,
) -> Comparison:
    """Answer the rows of ``table`` with checkpoints ``a`` and ``b`` of ``model`` and store both.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param a: Checkpoint identifier, alias (``"prod"``) or step.
    :param b: Checkpoint identifier, alias or step.
    :param table: The table of input rows.
    :param key: The column of prompts.
    :param target: The column of expected answers (needed by ``metric``).
    :param metric: ``"module:function"``, called as ``f(predictions, targets)``.
    :param out: The side-by-side table (created when missing; comparisons append to it).
    :param limit: Answer only the first ``limit`` rows.
    :raises CompareError: a metric without ``target``, a metric that does not import, a
        column the rows lack.
    """
    score = load_metric(metric) if metric else None
    if score is not None and not target:
        raise CompareError(
            f"`metric`={metric!r} needs `target`: the column of expected answers in `{table}`."
        )
    checkpoints = [promote.find_checkpoint(db, model, c) for c in (a, b)]
    rows = db[table].select().execute()[:limit] if limit else db[table].select().execute()
    missing = [c for c in (key, target) if c and rows and c not in rows[0]]
    if missing:
        raise CompareError(f"Rows of `{table}` have no column(s) {missing}; its columns: {sorted(rows[0])}.")
    prompts = [r[key] for r in rows]
    llm = db.load("LLM", model, component_cache=False)  # its adapter is swapped below: a copy of its own
    answers = []
    for checkpoint in checkpoints:
        llm.adapter_id = load_checkpoint(db, checkpoint)
        llm._pipeline = None  # the weights of the other checkpoint
        answers.append([x.strip() for x in llm.answers(prompts)])
    pid = db[table].primary_id.execute()
    side = [
        {
            "source": str(r[pid]),
            "prompt": p,
            "answer_a": x,
            "answer_b": y,
            "target": r[target] if target else "",
        }
        for r, p, x, y in zip(rows, prompts, *answers)
    ]
    return store(db, model, checkpoints, side, metric=metric, out=out)


def store(
    db,
    model: str,
    checkpoints: t.Sequence[str],
    side: t.List[t.Dict[str, t.Any]],
    metric: t.Optional[str] = None,
    out: str = "compare",
) -> Comparison:
    """Store answers side by side in ``out`` and one summary row (with each side's score)
    in ``comparisons``, under a new comparison id.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param checkpoints: What answered on each side (``a``, ``b``).
    :param side: Rows with ``source``, ``prompt``, ``answer_a``, ``answer_b``, ``target``.
    :param metric: ``"module:function"``, called as ``f(predictions, targets)``.
    :param out: The side-by-side table (created when missing).
    """
    score = load_metric(metric) if metric else None
    comparison = uuid.uuid4().hex[:12]
    side = [{"comparison": comparison, **r} for r in side]
    ensure_table(db, out, SIDE_BY_SIDE)
    if side:
        db[out].insert(side)
    targets = [r["target"] for r in side]
    summary = {
        "comparison": comparison,
        "model": model,
        "checkpoint_a": checkpoints[0],
        "checkpoint_b": checkpoints[1],
        "table": out,
        "rows": len(side),
        "score": metric or "",
        "score_a": float(score([r["answer_a"] for r in side], targets)) if score else float("nan"),
        "score_b": float(score([r["answer_b"] for r in side], targets)) if score else float("nan"),
        "time": time.time(),
    }
    ensure_table(db, SUMMARY_TABLE, SUMMARY)
    db[SUMMARY_TABLE].insert([summary])
    return Comparison(out=out, rows=side, summary=summary)


def win_rate(db, comparison: str, feedback: str, out: str = "compare") -> t.Dict[str, float]:
    """The share of judged rows of ``comparison`` each side won (ties count half to each).

    :param db: The datalayer.
    :param comparison: The id :func:`compare` returned (``summary["comparison"]``).
    :param feedback: The table of judgements ``{"output": <id of a row of out>,
        "preferred": "a" | "b" | "tie"}``.
    :param out: The side-by-side table of the comparison.
    :return: ``{"a": share, "b": share, "judged": n}``.
    """
    pid = db[out].primary_id.execute()
    mine = {str(r[pid]) for r in db[out].select().execute() if r["comparison"] == comparison}
    votes = [f for f in db[feedback].select().execute() if str(f.get("output")) in mine]
    bad = sorted({str(f.get("preferred")) for f in votes} - {"a", "b", "tie"})
    if bad:
        raise CompareError(f"`preferred` must be 'a', 'b' or 'tie' in `{feedback}`; found {bad}.")
    n = len(votes)
    if not n:
        return {"a": float("nan"), "b": float("nan"), "judged": 0}
    tie = sum(f["preferred"] == "tie" for f in votes) / 2
    return {
        "a": (sum(f["preferred"] == "a" for f in votes) + tie) / n,
        "b": (sum(f["preferred"] == "b" for f in votes) + tie) / n,
        "judged": n,
    }


def format_table(result: Comparison, width: int = 24) -> str:
    """The comparison as a text table: prompt, answer of a, answer of b, target, then the scores."""
    s = result.summary

    def cut(text: str) -> str:
        text = str(text).replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    head = ["prompt", f"a: {s['checkpoint_a']}", f"b: {s['checkpoint_b']}", "target"]
    lines = [
        [cut(r["prompt"]), cut(r["answer_a"]), cut(r["answer_b"]), cut(r["target"])] for r in result.rows
    ]
    cols = [max(len(x) for x in col) for col in zip(*([[cut(h) for h in head]] + lines))]
    fmt = "  ".join(f"{{:<{w}}}" for w in cols)
    text = [fmt.format(*[cut(h) for h in head])] + [fmt.format(*line) for line in lines]
    if s["score"]:
        text.append(f"{s['score']}: a {s['score_a']:.4g}  b {s['score_b']:.4g}  ({s['rows']} rows)")
    text.append(f"stored: table `{result.out}` (comparison {s['comparison']}), summary in `{SUMMARY_TABLE}`")
    return "\n".join(text)
