"""Progress bars for long work (artifact copies, export), drawn only for a person watching.

tqdm's ``disable=None`` turns a bar off when its stream (stderr) is not a terminal: logs,
CI and pipes stay free of carriage-return noise. Training bars are transformers' own
(``disable_tqdm``; the command line sets it the same way).
"""

from __future__ import annotations

import typing as t

#: Copies smaller than this finish before a bar would be read: no bar.
MIN_BYTES_FOR_A_BAR = 50_000_000


def progress_bar(total: float, desc: str, unit: str = "B", minimum: float = 0) -> t.Any:
    """A tqdm bar over ``total`` (bytes by default), off when stderr is not a TTY or
    ``total`` is below ``minimum``.

    :param total: Amount of work (bytes, steps, ...).
    :param desc: What is being done, shown left of the bar.
    :param unit: Unit of ``total`` (``B`` scales to kB, MB, ...).
    :param minimum: Below this ``total``, no bar.
    """
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit == "B",
        disable=None if total >= minimum else True,
        leave=False,
    )
