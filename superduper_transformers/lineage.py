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


#: How ``train_sha256``/``eval_sha256`` combine the row hashes (recorded in the
#: fingerprint: hashes made another way are not compared).
HASH_METHOD = "sha256-sum"


class RowsHash:
    """An order-independent hash of rows, fed one row (or page) at a time.

    Each row is hashed on its own (canonical JSON) and the row hashes are added modulo
    2**256: the same rows in another order give the same hash; a changed, added, removed
    or duplicated row gives another. The sum needs no row kept, so a table of any size
    is fingerprinted in constant memory, page by page.
    """

    def __init__(self):
        self.count = 0
        self._sum = 0

    def add(self, row: t.Mapping[str, t.Any]) -> None:
        """Count ``row`` in the hash."""
        self._sum = (self._sum + int(_row_hash(row), 16)) % (1 << 256)
        self.count += 1

    def update(self, rows: t.Iterable[t.Mapping[str, t.Any]]) -> RowsHash:
        """Count every row of ``rows``; return ``self``."""
        for row in rows:
            self.add(row)
        return self

    def hexdigest(self) -> str:
        """The hash so far: 64 hex digits."""
        return f"{self._sum:064x}"

    @classmethod
    def combine(cls, hashes: t.Iterable[RowsHash]) -> RowsHash:
        """The hash of all the rows of ``hashes`` together (as if added to one)."""
        out = cls()
        for h in hashes:
            out._sum = (out._sum + h._sum) % (1 << 256)
            out.count += h.count
        return out


def content_hash(rows: t.Iterable[t.Mapping[str, t.Any]]) -> str:
    """sha256-based hash over the rows' values, independent of the order the rows come in.

    :param rows: The training values, one mapping per row (column name -> value).
    """
    return RowsHash().update(rows).hexdigest()


class DataFingerprint:
    """:func:`data_fingerprint` built incrementally: feed the rows page by page.

    :param query: The string form of the trainer's ``select``.
    :param max_seq_length: Tokens per example (shapes what is learned of each row).
    :param prompt_template: The ``LLM``'s prompt template.
    :param chat_format: ``LLMTrainer.setup_chat_format``.
    """

    def __init__(self, query: str, max_seq_length, prompt_template, chat_format: bool):
        self.query = str(query)
        self.settings = {
            "max_seq_length": max_seq_length,
            "prompt_template": prompt_template,
            "chat_format": bool(chat_format),
        }
        self.train, self.eval = RowsHash(), RowsHash()

    def add_train(self, rows: t.Iterable[t.Mapping[str, t.Any]]) -> None:
        """Count training rows."""
        self.train.update(rows)

    def add_eval(self, name: str, rows: t.Iterable[t.Mapping[str, t.Any]]) -> None:
        """Count rows of the eval set ``name``."""
        self.eval.update({"_set": name, **row} for row in rows)

    @classmethod
    def of_hashes(
        cls,
        query: str,
        train: RowsHash,
        evals: t.Mapping[str, RowsHash],
        max_seq_length,
        prompt_template,
        chat_format: bool,
        sources: t.Optional[t.List[t.Dict[str, t.Any]]] = None,
    ) -> t.Dict[str, t.Any]:
        """The fingerprint from hashes already made (eval rows hashed with their ``_set``).

        :param sources: The sources of a mixed training set (each its query, weight, row
            count and hash), recorded as ``sources``; None when the rows are one query's.
        """
        fp = cls(query, max_seq_length, prompt_template, chat_format)
        fp.train, fp.eval = train, RowsHash.combine(evals.values())
        out = fp.result()
        if sources:
            out["sources"] = list(sources)
        return out

    def result(self) -> t.Dict[str, t.Any]:
        """The fingerprint as a JSON dict."""
        return {
            "query": self.query,
            "train_rows": self.train.count,
            "eval_rows": self.eval.count,
            "train_sha256": self.train.hexdigest(),
            "eval_sha256": self.eval.hexdigest(),
            "hash": HASH_METHOD,
            **self.settings,
        }


def data_fingerprint(
    query: str,
    train_rows: t.Iterable[t.Mapping[str, t.Any]],
    eval_rows: t.Mapping[str, t.Iterable[t.Mapping[str, t.Any]]],
    max_seq_length: t.Optional[int],
    prompt_template: t.Optional[str],
    chat_format: bool,
) -> t.Dict[str, t.Any]:
    """The fingerprint of one training's data, as a JSON dict.

    :param query: The string form of the trainer's ``select``.
    :param train_rows: The training rows, keyed by the trainer's ``key`` columns (any
        iterable: they are read once, never held).
    :param eval_rows: The evaluation rows by eval set name (``valid``, validation datasets).
    :param max_seq_length: Tokens per example (shapes what is learned of each row).
    :param prompt_template: The ``LLM``'s prompt template.
    :param chat_format: ``LLMTrainer.setup_chat_format``.
    """
    fp = DataFingerprint(query, max_seq_length, prompt_template, chat_format)
    fp.add_train(train_rows)
    for name, rows in sorted(eval_rows.items()):
        fp.add_eval(name, rows)
    return fp.result()


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
    # A hash made another way (before rows were hashed page by page) cannot be compared.
    same_method = before.get("hash") == after.get("hash")
    for key in DATA_KEYS:
        old, new = before.get(key), after.get(key)
        if old == new or (key.endswith("_sha256") and not same_method):
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
