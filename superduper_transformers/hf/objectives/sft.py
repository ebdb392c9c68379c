"""Supervised fine-tuning (trl's ``SFTTrainer``): learn the text, or ``y`` given ``X``."""

from __future__ import annotations

import typing as t

from superduper_transformers.hf import data
from superduper_transformers.hf.objectives import Objective
from superduper_transformers.settings import PADDING_FREE, resolve_batching


class SFT(Objective):
    """Rows of one text column (learn it all) or a pair (X, y): learn ``y`` given ``X``.

    Rows are tokenized here (prompt labels masked with -100, cached by content), so trl
    keeps our labels as they are, also when it packs them.
    """

    name = "sft"
    config_class = "trl:SFTConfig"
    trainer_class = "trl:SFTTrainer"

    def columns(self, key):
        """``[X]`` or ``[X, y]``."""
        return [key] if isinstance(key, str) else list(key)

    def key_issue(self, key):
        """One column or a pair."""
        names = [key] if isinstance(key, str) else list(key) if isinstance(key, (list, tuple)) else None
        if (
            names is not None
            and 1 <= len(names) <= 2
            and all(isinstance(k, str) and k.strip() for k in names)
        ):
            return None
        return (
            f"`key` must be a column name (learn the whole text) or a pair (X, y) of column "
            f"names (learn y given X), got {key!r}."
        )

    def config_kwargs(self, kwargs, max_seq_length):
        """Padding-free batches by default; rows arrive tokenized (trl does not re-map them)."""
        kwargs = {**kwargs, "max_length": max_seq_length}
        if resolve_batching(kwargs).mode == PADDING_FREE:
            # Rows are cut to `max_seq_length` when tokenized; trl refuses a `max_length`
            # with padding-free batches that are not packed (it would not enforce it).
            kwargs.update(padding_free=True, max_length=None)
        if not kwargs.get("packing"):
            # Our rows arrive tokenized, labelled and cut to `max_seq_length`: trl's own
            # preparation would only re-read every row (a pass of minutes over a large
            # table). Packing is done in that preparation.
            kwargs["dataset_kwargs"] = {"skip_prepare_dataset": True, **(kwargs.get("dataset_kwargs") or {})}
        return kwargs

    def check_rows(self, rows, columns, where, start=0):
        """Text (or conversations) under the key columns."""
        data.check_rows(rows, columns[0], columns[1] if len(columns) > 1 else None, where, start=start)

    def build_dataset(self, tokenizer, rows, columns, tokenization, fingerprint, owner=None):
        """Tokenized ``input_ids``/``labels`` (see :func:`..data.build_dataset`), cached by ``fingerprint``."""
        X, y = columns[0], columns[1] if len(columns) > 1 else None
        settings = dict(X=X, y=y, **tokenization)
        key = data.tokenization_key(tokenizer, fingerprint, **settings)
        return data.build_dataset(tokenizer, rows, fingerprint=key, owner=owner, **settings)

    def tokenized(self) -> bool:
        """Rows become tokens here (Ray Data tokenizes them on the cluster the same way)."""
        return True


#: For type checkers: an SFT training's ``tokenization`` keywords.
Tokenization = t.Dict[str, t.Any]
