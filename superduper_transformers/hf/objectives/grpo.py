"""Group relative policy optimisation (trl's ``GRPOTrainer``): learn from rewards.

Rows are prompts. For each prompt the model samples ``num_generations`` completions,
the reward functions score them, and the policy moves towards the completions that
score above their group's mean. Reward functions are given by import path (stored as
JSON, imported where training runs, see :mod:`..rewards`); the other columns of the
``key`` reach them as keyword arguments under their column names (a reference answer,
a test case...).
"""

from __future__ import annotations

import typing as t

from superduper_transformers.hf.data import DataError
from superduper_transformers.hf.objectives import Objective, check_text, first_rows, rows_of, text_dataset


class GRPO(Objective):
    """Rows of prompts; ``key`` is the prompt column, or the prompt column followed by
    columns handed to the reward functions."""

    name = "grpo"
    config_class = "trl:GRPOConfig"
    trainer_class = "trl:GRPOTrainer"
    default_key = ("prompt",)
    #: Its loss is no measure of quality (it is near 0 by construction): the reward is.
    eval_metrics = ("reward", "reward_std", "loss")

    def columns(self, key):
        """``[prompt, *other columns]``."""
        return [key] if isinstance(key, str) else list(key)

    def key_issue(self, key):
        """A column name, or a tuple of them starting with the prompt's."""
        names = [key] if isinstance(key, str) else list(key) if isinstance(key, (list, tuple)) else []
        if names and all(isinstance(k, str) and k for k in names) and len(set(names)) == len(names):
            if any(k in ("completions", "completion_ids", "trainer_state") for k in names[1:]):
                return (
                    f"`key` of a `grpo` trainer names {names[1:]}: `completions`, `completion_ids` and "
                    "`trainer_state` are keyword arguments trl gives the reward functions itself. "
                    "Rename the column."
                )
            return None
        return (
            "`key` of a `grpo` trainer must be the prompt column, or a tuple of distinct column names "
            f"starting with it (the others reach the reward functions), e.g. key=('prompt', 'answer'); "
            f"got {key!r}."
        )

    def config_kwargs(self, kwargs, max_seq_length):
        """GRPO's lengths are its own (``max_completion_length``): no ``max_length``."""
        return dict(kwargs)

    def check_rows(self, rows, columns, where, start=0):
        """Text under the prompt column; the other columns must be present."""
        check_text(rows, columns[:1], where, start)
        for i, row in enumerate(rows, start):
            for k in columns[1:]:
                if k not in row:
                    raise DataError(
                        f"Key `{k}` is missing from row {i} of the {where}; the row has keys "
                        f"{sorted(c for c in row if not str(c).startswith('_'))}. Fix the trainer's "
                        "`key` or the rows."
                    )

    def examples(self, rows, columns, tokenization):
        """The dataset rows: ``prompt`` (the LLM's template applied) and the other columns."""
        p, others = columns[0], columns[1:]
        template = tokenization.get("prompt_template") or "{input}"
        for r in rows_of(rows):
            yield {"prompt": template.format(input=r[p]), **{k: r[k] for k in others}}

    def build_dataset(self, tokenizer, rows, columns, tokenization, fingerprint, owner=None):
        """Column ``prompt`` and the other columns under their names (trl passes them on)."""
        return text_dataset(self.examples(rows, columns, tokenization))

    def preflight(self, rows, columns, settings, tokenization):
        """Import the reward functions and call each once on a couple of rows."""
        from superduper_transformers.hf.rewards import check_reward_funcs

        sample = first_rows(rows, 2)
        check_reward_funcs(settings.reward_funcs, list(self.examples(sample, columns, tokenization)))

    def trainer_inputs(self, settings) -> t.Dict[str, t.Any]:
        """The reward functions, imported here (this process or a Ray worker)."""
        from superduper_transformers.hf.rewards import build_reward_funcs

        return {"reward_funcs": build_reward_funcs(settings.reward_funcs if settings else ())}

    def build_trainer(self, model, args, train_dataset, eval_dataset, tokenizer, callbacks, **kwargs):
        """trl's ``GRPOTrainer``; a quantized model's trainable weights keep their dtype.

        trl casts them to bf16 (its QLoRA recipe) whatever the training precision; a whole
        module trained beside the adapter (``lora_modules_to_save=["lm_head"]``) then meets
        fp32 activations when GRPO generates outside autocast, and fails ("expected m1 and
        m2 to have the same dtype").
        """
        from superduper_transformers.hf.quantization import trainable_dtypes_kept

        with trainable_dtypes_kept(model):
            return super().build_trainer(
                model, args, train_dataset, eval_dataset, tokenizer, callbacks, **kwargs
            )
