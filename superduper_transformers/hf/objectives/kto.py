"""Kahneman-Tversky optimisation (trl's ``KTOTrainer``): learn from thumbs up and down.

Rows are unpaired: a prompt, a completion and a boolean label (desirable or not), the
feedback an app collects cheaply. As with DPO, the reference model of a LoRA training is
the starting point with the adapter disabled (or trl's frozen copy of a continued
adapter): no second copy of the base weights.
"""

from __future__ import annotations

import typing as t

from superduper_transformers.hf.data import DataError
from superduper_transformers.hf.objectives import Objective, check_text, rows_of, text_dataset

#: The columns of a feedback row, in the order of the trainer's ``key``.
COLUMNS = ("prompt", "completion", "label")


class KTO(Objective):
    """Rows of (prompt, completion, label); ``key`` names the three columns in that order."""

    name = "kto"
    config_class = "trl:KTOConfig"
    trainer_class = "trl:KTOTrainer"
    default_key = COLUMNS
    eval_metrics = ("loss", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl")

    def config_issues(self, kwargs: t.Mapping[str, t.Any]) -> t.List[str]:
        """trl's KTO estimates its KL term from the other rows of a batch: two at least."""
        batch = kwargs.get("per_device_train_batch_size", 8)
        if kwargs.get("loss_type", "kto") == "kto" and isinstance(batch, int) and batch < 2:
            return [
                f"`per_device_train_batch_size`={batch}: KTO estimates its KL term from the other rows "
                "of a batch, so it needs at least 2 (e.g. 8), or `loss_type='apo_zero_unpaired'`."
            ]
        return []

    def check_rows(self, rows, columns, where, start=0):
        """Text in prompt and completion, and a boolean label."""
        prompt, completion, label = columns
        check_text(rows, [prompt, completion], where, start)
        for i, row in enumerate(rows, start):
            if label not in row:
                raise DataError(
                    f"Key `{label}` is missing from row {i} of the {where}; the row has keys "
                    f"{sorted(c for c in row if not str(c).startswith('_'))}. Fix the trainer's "
                    "`key` or the rows."
                )
            if not isinstance(row[label], bool):
                raise DataError(
                    f"Key `{label}` of row {i} of the {where} holds {row[label]!r:.60} "
                    f"({type(row[label]).__name__}); a KTO label must be a boolean: True for a "
                    "desirable completion (thumbs up), False for an undesirable one. Store it as "
                    "a bool column."
                )

    def build_dataset(self, tokenizer, rows, columns, tokenization, fingerprint, owner=None):
        """Columns ``prompt``/``completion``/``label``, shuffled once with a fixed seed.

        trl's KTO reads the rows in order (its KL term pairs neighbours in a batch), so
        rows stored as all thumbs-up then all thumbs-down would make one-sided batches.
        """
        p, c, lab = columns
        template = tokenization.get("prompt_template") or "{input}"
        examples = (
            {"prompt": template.format(input=r[p]), "completion": r[c], "label": bool(r[lab])}
            for r in rows_of(rows)
        )
        return text_dataset(examples).shuffle(seed=0)
