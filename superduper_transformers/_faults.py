"""Deterministic crash points for the crash-safety tests (inactive unless asked for).

``SD_TRANSFORMERS_TEST_KILL_AT="<point>:<step>[,<point>:<step>...]"`` makes the
process SIGKILL itself when it reaches ``<point>`` for the checkpoint of ``<step>``:

- ``copy``: after the first file of the checkpoint was copied into the artifact store,
- ``registered``: right after the ``Checkpoint`` row was written (before pruning and
  before the model row points at it).

The name has no ``SUPERDUPER_`` prefix: superduper reads every ``SUPERDUPER_*`` variable
as configuration and complains about unknown ones.

SIGKILL, not an exception: nothing (no ``finally``, no atexit, no flush) may run, as when
a machine is lost. Reading one environment variable per checkpoint costs nothing.
"""

from __future__ import annotations

import os
import signal

#: The environment variable naming the crash points.
ENV = "SD_TRANSFORMERS_TEST_KILL_AT"


def crash_point(point: str, step: int) -> None:
    """SIGKILL this process if ``point:step`` is listed in ``$SD_TRANSFORMERS_TEST_KILL_AT``.

    :param point: Name of the place in the code (``copy``, ``registered``).
    :param step: Global step of the checkpoint being handled.
    """
    wanted = os.environ.get(ENV)
    if wanted and f"{point}:{int(step)}" in {w.strip() for w in wanted.split(",")}:
        os.kill(os.getpid(), signal.SIGKILL)
