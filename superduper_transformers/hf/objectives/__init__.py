"""Training objectives: what turns rows into a trl trainer's columns, and builds that trainer.

One module per objective (``sft.py``, ``dpo.py``, ``kto.py``, ``orpo.py``, ``grpo.py``), each an :class:`Objective`. Everything
around the trainer (the plan, launch on this process or on Ray, the callback that
records checkpoints, resume, lineage, promotions) is the same for every objective: adding
one is adding a module here and its name to :data:`OBJECTIVES`.

Nothing here knows the datalayer: rows arrive as mappings, page by page.
"""

from __future__ import annotations

import dataclasses as dc
import functools
import importlib
import typing as t

from superduper_transformers.hf.data import DataError


class Objective:
    """What one objective of training needs from the pipeline. Subclasses set the names.

    :cvar name: The value of ``LLMTrainer.objective``.
    :cvar config_class: trl's config class, as ``"module:Class"`` (imported on use).
    :cvar trainer_class: trl's trainer class, as ``"module:Class"``.
    :cvar default_key: The row columns it reads when the trainer's ``key`` names none.
    :cvar eval_metrics: What its trl trainer logs at an evaluation (without ``eval_``), the
        default best metric first (``metric_for_best_model`` may name any of them).
    """

    name: t.ClassVar[str]
    config_class: t.ClassVar[str]
    trainer_class: t.ClassVar[str]
    default_key: t.ClassVar[t.Tuple[str, ...]] = ()
    eval_metrics: t.ClassVar[t.Tuple[str, ...]] = ("loss",)

    # -- settings ---------------------------------------------------------
    def columns(self, key: t.Any) -> t.List[str]:
        """The row columns a training reads (the trainer's ``key``, validated): by default
        the columns ``key`` names, in the order of :attr:`default_key`."""
        return list(key)

    def key_issue(self, key: t.Any) -> t.Optional[str]:
        """Why ``key`` does not suit this objective (None when it does): by default, it must
        name as many columns as :attr:`default_key`, in that order."""
        n = len(self.default_key)
        if isinstance(key, (list, tuple)) and len(key) == n and all(isinstance(k, str) and k for k in key):
            return None
        return (
            f"`key` of a `{self.name}` trainer must name {_COUNTS.get(n, n)} columns "
            f"({', '.join(self.default_key)}), e.g. key={self.default_key!r}; got {key!r}."
        )

    def config_kwargs(self, kwargs: t.Dict[str, t.Any], max_seq_length: int) -> t.Dict[str, t.Any]:
        """The trl config's keywords from the user's (defaults of this objective added)."""
        return {**kwargs, "max_length": max_seq_length}

    def config_issues(self, kwargs: t.Mapping[str, t.Any]) -> t.List[str]:
        """Problems of the user's training keywords that trl would only raise mid-``fit``."""
        return []

    # -- rows -------------------------------------------------------------
    def check_rows(self, rows: t.Sequence[t.Mapping], columns: t.Sequence[str], where: str, start: int = 0):
        """Raise a ``DataError`` naming the row, the column and the fix for a bad row."""
        raise NotImplementedError

    def build_dataset(
        self,
        tokenizer,
        rows,
        columns: t.Sequence[str],
        tokenization: t.Mapping,
        fingerprint: str,
        owner: t.Optional[str] = None,
    ):
        """The ``datasets.Dataset`` this objective's trl trainer takes, from the rows.

        ``owner`` tags what is cached on disk with the model (removed when it is deleted).
        """
        raise NotImplementedError

    def preflight(
        self, rows: t.Sequence[t.Mapping], columns: t.Sequence[str], settings, tokenization
    ) -> None:
        """Checks that need a couple of rows and the resolved settings, before anything is
        written (GRPO calls its reward functions once). Raise a ``ValueError`` with the fix."""

    def tokenized(self) -> bool:
        """Whether rows become tokens here (else trl tokenizes the text columns itself)."""
        return False

    # -- the trainer -------------------------------------------------------
    def trainer_inputs(self, settings) -> t.Dict[str, t.Any]:
        """More keywords of the trl trainer, built where training runs from ``settings``
        (plain data): GRPO's reward functions."""
        return {}

    def build_trainer(self, model, args, train_dataset, eval_dataset, tokenizer, callbacks, **kwargs):
        """trl's trainer of this objective."""
        cls = load(self.trainer_class)
        return cls(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=callbacks,
            **kwargs,
        )


_COUNTS = {1: "one", 2: "two", 3: "three"}


def load(path: str):
    """Import ``"module:Name"``."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def config_fields(objective: str) -> t.FrozenSet[str]:
    """Names accepted by ``objective``'s trl config class (a superset of ``TrainingArguments``)."""
    cls = load(get(objective).config_class)
    return frozenset(f.name for f in dc.fields(cls) if f.init)


def names() -> t.List[str]:
    """The objectives an ``LLMTrainer`` may name."""
    return sorted(OBJECTIVES)


def get(name: t.Optional[str]) -> Objective:
    """The objective ``name`` (None: ``sft``, a trainer stored before objectives existed).

    :raises DataError: naming the value and the valid ones.
    """
    name = name or "sft"
    if name not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {names()}, got {name!r}.")
    module, _, cls = OBJECTIVES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def check_text(rows, columns, where: str, start: int = 0) -> None:
    """Every row has a non-empty str under each of ``columns`` (preference objectives)."""
    if not rows:
        raise DataError(
            f"The {where} are empty: the trainer's `select` returned no rows. Insert rows "
            "with `_fold='train'` before applying the model."
        )
    for i, row in enumerate(rows, start):
        for k in columns:
            if k not in row:
                raise DataError(
                    f"Key `{k}` is missing from row {i} of the {where}; the row has keys "
                    f"{sorted(c for c in row if not str(c).startswith('_'))}. Fix the trainer's "
                    "`key` or the rows."
                )
            if not isinstance(row[k], str) or not row[k]:
                raise DataError(
                    f"Key `{k}` of row {i} of the {where} holds {row[k]!r:.60}; it must be "
                    "non-empty text (str)."
                )


def rows_of(rows) -> t.Iterator[t.Mapping]:
    """Every row of ``rows``, page by page (``FoldRows``) or as they are (a list)."""
    for page in rows.pages() if hasattr(rows, "pages") else [rows]:
        yield from page


def first_rows(rows, n: int) -> t.List[t.Mapping]:
    """The first ``n`` rows of a set (one page read)."""
    from superduper_transformers.hf.data import pages

    for page in pages(rows):
        return list(page[:n])
    return []


def text_dataset(examples: t.Iterable[t.Mapping[str, t.Any]]):
    """A ``datasets.Dataset`` of text columns (trl tokenizes them)."""
    from datasets import Dataset

    return Dataset.from_list(list(examples))


#: ``LLMTrainer.objective`` -> the class of that objective (imported on use).
OBJECTIVES = {
    "sft": "superduper_transformers.hf.objectives.sft:SFT",
    "dpo": "superduper_transformers.hf.objectives.dpo:DPO",
    "kto": "superduper_transformers.hf.objectives.kto:KTO",
    "orpo": "superduper_transformers.hf.objectives.orpo:ORPO",
    "grpo": "superduper_transformers.hf.objectives.grpo:GRPO",
}
