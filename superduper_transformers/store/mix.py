"""Several selections mixed with weights: the sources of ``LLMTrainer(mix=...)``.

superduper 0.10 stores a list field as JSON, and a query is no JSON: each source is
stored as ``{"select": {"query": ..., "documents": [...], "label": ...}, "weight": w}``,
the query in superduper's own serialised form (``Query.dict()``), parsed back with the
datalayer when rows are read (:meth:`MixSource.select`).
"""

from __future__ import annotations

import dataclasses as dc
import json
import math
import typing as t

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: How the mix ends (``datasets.interleave_datasets``' ``stopping_strategy``).
STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")
_EXAMPLE = "mix=[{'select': db['domain'].select(), 'weight': 0.7}, {'select': db['general'].select(), 'weight': 0.3}]"


class MixError(ValueError):
    """A ``mix`` setting that cannot be used; the message names the entry, the value and the fix."""


@dc.dataclass(frozen=True)
class MixSource:
    """One selection of a mix and its share.

    :param query: The query in superduper's serialised form (``Query.dict()['query']``).
    :param documents: The values the query refers to (``Query.dict()['documents']``).
    :param label: The query as it reads (``str(query)``): its name in lineage and messages.
    :param weight: Its share of the mix (weights are normalised to sum to 1).
    """

    query: str
    documents: t.Tuple[t.Any, ...]
    label: str
    weight: float

    def select(self, db: Datalayer):
        """The query, bound to ``db``."""
        from superduper.base.query import parse_query

        return parse_query(self.query, list(self.documents), db=db)

    def to_json(self) -> t.Dict[str, t.Any]:
        """The stored form of this source."""
        return {
            "select": {"query": self.query, "documents": list(self.documents), "label": self.label},
            "weight": self.weight,
        }


def weight_issue(where: str, weight: t.Any) -> t.Optional[str]:
    """Why ``weight`` is no weight of a mix (None when it is a positive finite number).

    :param where: The setting as the user wrote it (``mix[1]['weight']``, ``data.mix[1].weight``).
    """
    if (
        isinstance(weight, (int, float))
        and not isinstance(weight, bool)
        and math.isfinite(weight)
        and weight > 0
    ):
        return None
    return (
        f"{where} must be a positive number (its share of the mix, e.g. 0.3), got {weight!r}. "
        "Remove the entry to leave its rows out."
    )


def _source(i: int, entry: t.Any, issues: t.List[str]) -> t.Optional[MixSource]:
    where = f"`mix[{i}]`"
    if not isinstance(entry, dict):
        issues.append(
            f"{where} must be a dict {{'select': QUERY, 'weight': NUMBER}}, got {entry!r:.80}. {_EXAMPLE}"
        )
        return None
    unknown = sorted(set(entry) - {"select", "weight"})
    if unknown:
        issues.append(f"{where} has unknown keys {unknown}: an entry has only `select` and `weight`.")
    weight = entry.get("weight")
    issue = weight_issue(f"`mix[{i}]['weight']`", weight)
    if issue:
        issues.append(issue)
        weight = None
    select = entry.get("select")
    if hasattr(select, "dict") and hasattr(select, "table"):  # a superduper query
        stored = select.dict()
        query, documents, label = stored["query"], list(stored["documents"]), str(select)
    elif isinstance(select, dict) and isinstance(select.get("query"), str):  # as stored
        query, documents = select["query"], list(select.get("documents") or [])
        label = str(select.get("label") or query)
    else:
        issues.append(
            f"`mix[{i}]['select']` must be a superduper query such as db['table'].select(), got "
            f"{select!r:.80}."
        )
        return None
    try:
        json.dumps(documents)
    except (TypeError, ValueError):
        issues.append(
            f"`mix[{i}]['select']` ({label}) filters on values that are not plain data (stored as "
            "JSON): filter on text, numbers or booleans."
        )
        return None
    return None if weight is None else MixSource(query, tuple(documents), label, float(weight))


def parse_mix(mix: t.Any, strategy: t.Any) -> t.Tuple[t.List[MixSource], t.List[str]]:
    """The sources of ``mix`` and every problem found (the ``mix`` and ``mix_strategy`` settings).

    :param mix: None, or a list of ``{"select": query, "weight": number}`` (queries as
        objects, or in the stored form).
    :param strategy: ``mix_strategy``: one of :data:`STRATEGIES`.
    """
    issues: t.List[str] = []
    if strategy not in STRATEGIES:
        issues.append(
            f"`mix_strategy` must be one of {list(STRATEGIES)}, got {strategy!r}: 'first_exhausted' "
            "ends the mix when one source has no rows left."
        )
    if mix is None:
        return [], issues
    if not isinstance(mix, (list, tuple)) or not mix:
        issues.append(
            f"`mix` must be a non-empty list of selections with weights, got {mix!r:.80}. {_EXAMPLE}"
        )
        return [], issues
    sources = [_source(i, entry, issues) for i, entry in enumerate(mix)]
    seen: t.Dict[str, int] = {}
    for i, s in enumerate(sources):
        if s is None:
            continue
        if s.label in seen:
            issues.append(
                f"`mix[{i}]['select']` ({s.label}) is also `mix[{seen[s.label]}]`: give each selection "
                "once, with the sum of its weights."
            )
        seen[s.label] = i
    return [s for s in sources if s is not None], issues


def probabilities(sources: t.Sequence[MixSource]) -> t.List[float]:
    """The weights, normalised to sum to 1."""
    total = sum(s.weight for s in sources)
    return [s.weight / total for s in sources]


def describe(sources: t.Sequence[MixSource], strategy: str) -> str:
    """The mix as one line: ``mix(a.select() @ 0.7, b.select() @ 0.3; first_exhausted)``."""
    parts = ", ".join(f"{s.label} @ {s.weight:g}" for s in sources)
    return f"mix({parts}; {strategy})"
