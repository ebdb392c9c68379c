"""Pages of rows tokenized in worker processes, on a machine with cores to spare.

Tokenizing is bound by the Rust tokenizer on one core (docs/benchmarks.md); the fast
tokenizer's own threads are off when ``TOKENIZERS_PARALLELISM=false`` and under a
forked worker. :func:`ordered_map` hands pages to processes and yields their results in
the pages' order, with a few pages in flight, so the output is the same as one process
gives, byte for byte, and the rows are still read once, page by page.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import typing as t

#: How many processes tokenize the rows: a number, or ``auto`` (the cores this process
#: may run on). Unset: 1, tokenizing in the training process itself.
PROCESSES_ENV = "SD_TRANSFORMERS_TOKENIZE_PROCESSES"

_work: t.Dict[str, t.Callable] = {}


def available_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def processes_setting(value: t.Union[int, str, None] = None) -> int:
    """How many processes tokenize: ``value``, else :data:`PROCESSES_ENV`, else 1.

    :param value: A number of processes (1: none besides this one), or ``"auto"``.
    """
    where = "`processes`" if value is not None else f"the environment variable {PROCESSES_ENV}"
    raw = value if value is not None else os.environ.get(PROCESSES_ENV, "1")
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return available_cores()
    try:
        number = int(raw)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(raw, bool):
        raise ValueError(
            f"{where} is {raw!r}: give a number of processes (1 or more; 1 tokenizes in this "
            f"process) or 'auto' for the {available_cores()} cores this process may use."
        )
    return number


def ordered_map(
    work: t.Callable[[t.Any], t.Any], items: t.Iterable[t.Any], processes: int
) -> t.Iterator[t.Any]:
    """``map(work, items)`` in ``processes`` worker processes, results in the items' order.

    At most two items per process are in flight, so ``items`` is read as results are
    taken. ``work`` (a tokenizer and settings) goes to each worker once, when it starts:
    forked where the platform forks, else pickled.

    :param work: A function of one item.
    :param items: The items (pages of rows).
    :param processes: Worker processes; 1 runs ``work`` here, without any.
    """
    if processes <= 1:
        yield from map(work, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context(method), initializer=_start, initargs=(work,)
    )
    in_flight: t.Deque[t.Any] = collections.deque()
    try:
        for item in items:
            in_flight.append(pool.submit(_run, item))
            if len(in_flight) >= 2 * processes:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start(work: t.Callable[[t.Any], t.Any]) -> None:
    _work["work"] = work


def _run(item: t.Any) -> t.Any:
    return _work["work"](item)
