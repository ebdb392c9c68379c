"""Odds-ratio preference optimisation (trl's ``ORPOTrainer``, in ``trl.experimental``).

The rows of DPO (prompt, chosen, rejected), but no reference model at all: ORPO adds a
log-odds-ratio penalty on the rejected answer to the supervised loss on the chosen one,
so it can start from a base model without an SFT step first. trl keeps it in
``trl.experimental`` (its API may change between trl releases; its import warning is
silenced here, where the choice is made).
"""

from __future__ import annotations

import contextlib
import io
import warnings

from superduper_transformers.hf.objectives.dpo import DPO


class ORPO(DPO):
    """Rows of (prompt, chosen, rejected) text, as :class:`~.dpo.DPO`."""

    name = "orpo"
    config_class = "superduper_transformers.hf.objectives.orpo:ORPOConfig"
    trainer_class = "superduper_transformers.hf.objectives.orpo:ORPOTrainer"
    eval_metrics = (*DPO.eval_metrics, "log_odds_ratio", "nll_loss")


def __getattr__(name: str):
    """``ORPOConfig``/``ORPOTrainer`` from ``trl.experimental.orpo``, imported on first use."""
    if name not in ("ORPOConfig", "ORPOTrainer"):
        raise AttributeError(name)
    # Its import also loads transformers' tracker integrations, which print a line of their
    # own (wandb's offline mode): an objective's name looked up must not write to stdout.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental import orpo

    return getattr(orpo, name)
