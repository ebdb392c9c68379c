"""The records of training rounds: what a ``Loop`` did, which rows it used, and pauses.

Three tables, each written by appending rows only (a process killed between two writes
leaves every earlier row whole, and nothing is ever updated in place):

- ``loop_rounds``: one row per step of a round: ``started`` (its rows are chosen),
  ``trained`` (the candidate checkpoint exists), then one of ``promoted``, ``rejected``
  or ``abandoned``. A round's state is its latest row; a round without a final row was
  cut off and is finished (resumed) by the next trigger.
- ``loop_ledger``: which rows of the watched table each round used (``new`` or
  ``replay``), and the rows that were there when the loop was applied (``baseline``).
  A row of the table is *new* when no round that counts used it: rows of an abandoned
  round, or of one whose ``started`` row was never written, count again.
- ``loop_control``: ``pause`` / ``resume`` of a model's rounds (the latest row wins).
"""

from __future__ import annotations

import dataclasses as dc
import math
import time
import typing as t

from superduper_transformers.store.datalayer import ensure_table

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

EVENTS, LEDGER, CONTROL = "loop_rounds", "loop_ledger", "loop_control"
STARTED, TRAINED, PROMOTED, REJECTED, ABANDONED = "started", "trained", "promoted", "rejected", "abandoned"
FINAL = (PROMOTED, REJECTED, ABANDONED)
PAUSE, RESUME = "pause", "resume"
BASELINE = "baseline"

EVENT_FIELDS = {
    "loop": "str",
    "model": "str",
    "number": "int",
    "round_id": "str",
    "state": "str",
    "new_rows": "int",
    "replay_rows": "int",
    "prod": "str",
    "in_use": "str",
    "candidate": "str",
    "experiment_id": "str",
    "comparison": "str",
    "score_candidate": "float",
    "score_prod": "float",
    "margin": "float",
    "detail": "str",
    "time": "float",
}
LEDGER_FIELDS = {"loop": "str", "round_id": "str", "source": "str", "kind": "str"}
CONTROL_FIELDS = {"model": "str", "action": "str", "by": "str", "time": "float"}


@dc.dataclass
class Round:
    """One round of a loop, as its rows in ``loop_rounds`` tell it (the latest value of each field)."""

    loop: str
    model: str
    number: int
    round_id: str
    state: str = STARTED
    new_rows: int = 0
    replay_rows: int = 0
    prod: str = ""
    in_use: str = ""
    candidate: str = ""
    experiment_id: str = ""
    comparison: str = ""
    score_candidate: float = math.nan
    score_prod: float = math.nan
    margin: float = math.nan
    detail: str = ""
    started_at: float = 0.0
    time: float = 0.0
    states: t.List[str] = dc.field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the round reached a decision (or was abandoned)."""
        return self.state in FINAL

    def describe(self) -> str:
        """``round 2  rejected  candidate X (0.25) vs prod Y (1), margin 0.1  8 new + 2 replayed rows``."""
        parts = [f"round {self.number}", self.state]
        if self.candidate:
            score = f" ({self.score_candidate:.4g})" if _known(self.score_candidate) else ""
            parts.append(f"candidate {self.candidate}{score}")
        if self.prod:
            score = f" ({self.score_prod:.4g})" if _known(self.score_prod) else ""
            parts.append(f"vs {self.prod}{score}" if self.candidate else f"from {self.prod}")
        if _known(self.margin):
            parts.append(f"margin {self.margin:.4g}")
        parts.append(f"{self.new_rows} new + {self.replay_rows} replayed rows")
        if self.detail:
            parts.append(self.detail)
        return "  ".join(parts)


_ROUND_FIELDS = {f.name for f in dc.fields(Round)} - {"loop", "model", "number", "round_id"}


def _known(x) -> bool:
    return isinstance(x, (int, float)) and not math.isnan(x)


def ensure_tables(db: Datalayer) -> None:
    """Create the three tables where missing."""
    for name, fields in ((EVENTS, EVENT_FIELDS), (LEDGER, LEDGER_FIELDS), (CONTROL, CONTROL_FIELDS)):
        ensure_table(db, name, fields)


def _rows(db: Datalayer, table: str, **equal) -> t.List[t.Dict[str, t.Any]]:
    if table not in db.show("Table"):
        return []
    q = db[table]
    conditions = [q[k] == v for k, v in equal.items()]
    query = q.filter(*conditions).select() if conditions else q.select()
    return [dict(r) for r in query.execute()]


def record(db: Datalayer, r: Round, state: str, **fields) -> Round:
    """Append the row of ``state`` for round ``r`` and return the round as it now stands.

    :param db: The datalayer.
    :param r: The round.
    :param state: ``started``, ``trained``, ``promoted``, ``rejected`` or ``abandoned``.
    :param fields: The fields this step sets (candidate, scores, detail...).
    """
    r = dc.replace(r, state=state, time=time.time(), states=[*r.states, state], **fields)
    row = {k: getattr(r, k) for k in EVENT_FIELDS}
    row["state"] = state
    db[EVENTS].insert([{k: ("" if v is None else v) for k, v in row.items()}])
    return r


def rounds(db: Datalayer, loop: t.Optional[str] = None, model: t.Optional[str] = None) -> t.List[Round]:
    """The rounds of ``loop`` (or of every loop of ``model``; or all), oldest first.

    :param db: The datalayer.
    :param loop: The ``Loop``'s identifier.
    :param model: The ``LLM``'s identifier.
    """
    equal = {k: v for k, v in (("loop", loop), ("model", model)) if v is not None}
    out: t.Dict[t.Tuple[str, str], Round] = {}
    for row in sorted(_rows(db, EVENTS, **equal), key=lambda e: e["time"]):
        key = (row["loop"], row["round_id"])
        r = out.get(key) or Round(
            row["loop"], row["model"], row["number"], row["round_id"], started_at=row["time"]
        )
        values = {k: row[k] for k in EVENT_FIELDS if k in _ROUND_FIELDS and row.get(k) not in (None, "")}
        values = {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}
        out[key] = dc.replace(r, **values, states=[*r.states, row["state"]])
    return sorted(out.values(), key=lambda r: (r.loop, r.number, r.started_at))


def used_sources(db: Datalayer, loop: str) -> t.Set[str]:
    """Ids of the rows of the watched table that count as used: the baseline and the rows of
    every round that started and was not abandoned."""
    counted = {r.round_id for r in rounds(db, loop) if r.state != ABANDONED}
    counted.add(BASELINE)
    return {e["source"] for e in _rows(db, LEDGER, loop=loop) if e["round_id"] in counted}


def has_ledger(db: Datalayer, loop: str) -> bool:
    """Whether ``loop`` recorded its baseline (it was applied before)."""
    return bool(_rows(db, LEDGER, loop=loop, round_id=BASELINE)) or bool(rounds(db, loop))


def write_ledger(db: Datalayer, loop: str, round_id: str, sources: t.Dict[str, t.Sequence[str]]) -> None:
    """Record the rows a round uses: ``{kind: [source ids]}`` (``new``, ``replay``, ``baseline``)."""
    rows = [
        {"loop": loop, "round_id": round_id, "source": str(s), "kind": kind}
        for kind, ids in sources.items()
        for s in ids
    ]
    if rows:
        db[LEDGER].insert(rows)


def set_paused(db: Datalayer, model: str, paused: bool, by: str) -> None:
    """Pause (or resume) the rounds of ``model``: a paused model starts none (and finishes no
    cut-off one) until resumed; rows keep arriving and count toward the next round."""
    ensure_tables(db)
    db[CONTROL].insert(
        [{"model": model, "action": PAUSE if paused else RESUME, "by": by, "time": time.time()}]
    )


def paused(db: Datalayer, model: str) -> bool:
    """Whether the rounds of ``model`` are paused."""
    rows = sorted(_rows(db, CONTROL, model=model), key=lambda r: r["time"])
    return bool(rows) and rows[-1]["action"] == PAUSE
