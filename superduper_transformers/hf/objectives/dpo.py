"""Direct preference optimisation (trl's ``DPOTrainer``): prefer ``chosen`` to ``rejected``.

With LoRA the reference model is the starting point with the adapter disabled (trl does
this for a peft model given no ``ref_model``): no second copy of the weights.
"""

from __future__ import annotations

from superduper_transformers.hf.data import DataError
from superduper_transformers.hf.objectives import Objective, check_text

#: The columns of a preference row, in the order of the trainer's ``key``.
COLUMNS = ("prompt", "chosen", "rejected")


class DPO(Objective):
    """Rows of (prompt, chosen, rejected) text; ``key`` names the three columns in that order."""

    name = "dpo"
    config_class = "trl:DPOConfig"
    trainer_class = "trl:DPOTrainer"
    default_key = COLUMNS

    def columns(self, key):
        """The three columns ``(prompt, chosen, rejected)`` as the rows name them."""
        return list(key)

    def key_issue(self, key):
        """Three column names."""
        if isinstance(key, (list, tuple)) and len(key) == 3 and all(isinstance(k, str) and k for k in key):
            return None
        return (
            f"`key` of a `dpo` trainer must name three columns (prompt, chosen, rejected), "
            f"e.g. key=('prompt', 'chosen', 'rejected'); got {key!r}."
        )

    def check_rows(self, rows, columns, where, start=0):
        """Text in every column, and a chosen answer that differs from the rejected one."""
        check_text(rows, columns, where, start)
        _, chosen, rejected = columns
        for i, row in enumerate(rows, start):
            if row[chosen] == row[rejected]:
                raise DataError(
                    f"Row {i} of the {where} has the same `{chosen}` and `{rejected}` text "
                    f"({row[chosen]!r:.60}): a preference needs two different answers. Fix or "
                    "remove the row."
                )

    def build_dataset(self, tokenizer, rows, columns, tokenization, fingerprint, owner=None):
        """Columns ``prompt``/``chosen``/``rejected`` as text (trl tokenizes them; nothing cached)."""
        from datasets import Dataset

        p, c, r = columns
        template = tokenization.get("prompt_template") or "{input}"

        def examples():
            for page in rows.pages() if hasattr(rows, "pages") else [list(rows)]:
                for row in page:
                    yield {"prompt": template.format(input=row[p]), "chosen": row[c], "rejected": row[r]}

        return Dataset.from_list(list(examples()))
