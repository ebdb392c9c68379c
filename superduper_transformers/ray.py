"""The Ray Train path (built in the Ray issue)."""

from __future__ import annotations


def ray_train(*args, **kwargs):
    """Train on Ray Train: not available yet."""
    raise NotImplementedError(
        "Training on Ray (`ray_configs`) is not implemented in this version of "
        "superduper_transformers. Remove `ray_configs` to train locally."
    )


def handle_ray_results(db, llm, results):
    """Register the final Ray checkpoint: not available yet."""
    if db is None or llm is None:
        return results
    raise NotImplementedError(
        "Registering Ray results is not implemented in this version of superduper_transformers."
    )
