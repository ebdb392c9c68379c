"""The fingerprint of a training's data: what it read, how much, and a hash of the values.

A ``TrainingRun`` and each of its ``Checkpoint`` rows carry one (``data_fingerprint``),
so a model can be traced back to the rows it was trained on, and a resumed run can
tell whether the rows changed while it was interrupted. Pure functions on plain values:
this module imports nothing from the package (it sits with ``settings``), so both the
components and the run lifecycle (``resume``) can use it.
"""

from __future__ import annotations

import hashlib
import json
import typing as t

#: The keys of a fingerprint that describe the data itself (compared before resuming);
#: the tokenization settings beside them are recorded for lineage, and a change to them
#: starts a fresh run anyway (they are run settings).
DATA_KEYS = ("query", "train_rows", "eval_rows", "train_sha256", "eval_sha256")


def _row_hash(row: t.Mapping[str, t.Any]) -> str:
    # Canonical JSON: key order and the db's own row order must not change the hash.
    text = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(rows: t.Iterable[t.Mapping[str, t.Any]]) -> str:
    """sha256 over the rows' values, independent of the order the rows come in.

    Each row is hashed on its own (canonical JSON), the row hashes are sorted and hashed
    together: the same rows returned in another order give the same hash; a changed,
    added, removed or duplicated row gives another.

    :param rows: The training values, one mapping per row (column name -> value).
    """
    digest = hashlib.sha256()
    for h in sorted(_row_hash(r) for r in rows):
        digest.update(h.encode("ascii"))
    return digest.hexdigest()


def data_fingerprint(
    query: str,
    train_rows: t.Sequence[t.Mapping[str, t.Any]],
    eval_rows: t.Mapping[str, t.Sequence[t.Mapping[str, t.Any]]],
    max_seq_length: t.Optional[int],
    prompt_template: t.Optional[str],
    chat_format: bool,
) -> t.Dict[str, t.Any]:
    """The fingerprint of one training's data, as a JSON dict.

    :param query: The string form of the trainer's ``select``.
    :param train_rows: The training rows, keyed by the trainer's ``key`` columns.
    :param eval_rows: The evaluation rows by eval set name (``valid``, validation datasets).
    :param max_seq_length: Tokens per example (shapes what is learned of each row).
    :param prompt_template: The ``LLM``'s prompt template.
    :param chat_format: ``LLMTrainer.setup_chat_format``.
    """
    named = [{"_set": name, **row} for name, rows in sorted(eval_rows.items()) for row in rows]
    return {
        "query": str(query),
        "train_rows": len(train_rows),
        "eval_rows": len(named),
        "train_sha256": content_hash(train_rows),
        "eval_sha256": content_hash(named),
        "max_seq_length": max_seq_length,
        "prompt_template": prompt_template,
        "chat_format": bool(chat_format),
    }


def data_changes(before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any]) -> t.List[str]:
    """What changed in the data between two fingerprints, one readable line each.

    An empty ``before`` (a run recorded before fingerprints existed) has nothing to
    compare: no change is reported.

    :param before: The fingerprint the run was started (or last resumed) with.
    :param after: The fingerprint of the data now.
    """
    if not before:
        return []
    changes = []
    for key in DATA_KEYS:
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key.endswith("_sha256"):
            what = "training" if key.startswith("train") else "evaluation"
            changes.append(
                f"the content hash of the {what} rows changed ({str(old)[:12]} -> {str(new)[:12]})"
            )
        elif key == "query":
            changes.append(f"the query changed ({old!r} -> {new!r})")
        else:
            what = "training" if key.startswith("train") else "evaluation"
            changes.append(f"{what} rows: {old} before, {new} now")
    return changes
