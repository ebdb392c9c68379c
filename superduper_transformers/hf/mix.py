"""Mixed training rows: the datasets of several sources interleaved with weights.

``datasets.interleave_datasets`` draws each example from source ``i`` with probability
``weights[i]`` (normalised), the order fixed by the seed; no row is copied (the mixed
dataset is an index over the sources' cached Arrow files).
"""

from __future__ import annotations

import typing as t


def interleave(datasets: t.Sequence[t.Any], weights: t.Sequence[float], seed: int, strategy: str):
    """The rows of ``datasets`` drawn with ``weights``.

    :param datasets: One ``datasets.Dataset`` per source, in the mix's order.
    :param weights: Their weights (positive; normalised here).
    :param seed: The draw's seed: the same seed gives the same order.
    :param strategy: When the mix ends: ``first_exhausted`` (when one source has no rows
        left), ``all_exhausted`` (every row of every source drawn at least once, the
        smaller sources repeated) or ``all_exhausted_without_replacement``.
    """
    from datasets import interleave_datasets

    if len(datasets) == 1:
        return datasets[0]
    total = float(sum(weights))
    return interleave_datasets(
        list(datasets), probabilities=[w / total for w in weights], seed=seed, stopping_strategy=strategy
    )
