"""``ProgressCallback``: live progress of a training in its ``TrainingRun`` row.

Any process that opens the database can then tell how far a training is
(``superduper-transformers status MODEL``): step / max_steps, the latest loss,
tokens per second and the time left. One write per logging step, on rank 0 only,
at most one per ``min_interval_s``, and spaced so that writing takes at most
``write_budget`` of the training's time: on SQLite a write is one ``UPDATE`` of the
run's ``progress`` column, elsewhere a component apply in superduper (about 0.1-0.4 s),
and one of those every second would cost a training 10-40% of its speed.

It is also where a training stops cleanly when asked (:func:`request_stop`, set by
the command line's Ctrl-C handler): at the end of a step, never inside a checkpoint
write, with :class:`TrainingStopped`, which leaves the run ``running`` (interrupted)
so that the next apply resumes it from its latest checkpoint.
"""

from __future__ import annotations

import threading
import time
import typing as t

from superduper import logging
from transformers import TrainerCallback

from superduper_transformers import resume

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

TRAINING, ENDED, INTERRUPTED = "training", "ended", "interrupted"

#: Set by :func:`request_stop` (e.g. from a SIGINT handler); read at every step end.
_STOP = threading.Event()


class TrainingStopped(RuntimeError):
    """The training was stopped on request (Ctrl-C) at a step boundary; it can be resumed."""


def request_stop() -> None:
    """Ask the trainings of this process to stop at the end of their current step."""
    _STOP.set()


def clear_stop() -> None:
    """Forget an earlier :func:`request_stop` (before a new training starts)."""
    _STOP.clear()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called since the last :func:`clear_stop`."""
    return _STOP.is_set()


def mean_tokens_per_example(dataset: t.Any) -> t.Optional[float]:
    """Average ``input_ids`` length of the first 1000 examples of a tokenized
    ``datasets.Dataset`` (None for anything else: a stream has no cheap sample)."""
    try:
        lengths = [len(ids) for ids in dataset[:1000]["input_ids"]]
    except Exception:
        return None
    return sum(lengths) / len(lengths) if lengths else None


class ProgressCallback(TrainerCallback):
    """Write a training's progress into its ``TrainingRun`` row.

    Give ``db`` (local) or ``cfg`` (a Ray worker: rebuilt on rank 0 from the serialized
    datalayer config, never pickled).

    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run (its row is ``resume.run_identifier(model, experiment_id)``).
    :param db: The datalayer.
    :param cfg: Serialized datalayer config (Ray workers).
    :param tokens_per_example: Mean tokens of a training example (for tokens/s when the
        trainer does not count input tokens itself).
    :param min_interval_s: Least time between two writes (the final one is always written).
    :param write_budget: Largest share of the training's time spent writing progress:
        after a write that took ``c`` seconds the next waits at least ``c / write_budget``.
    :param connect: Returns the datalayer to write to, instead of one rebuilt from ``cfg``
        (a Ray worker passes its ``LLMCallback``'s: rank 0 builds one datalayer, not two).
    """

    def __init__(
        self,
        model: str,
        experiment_id: str,
        db: t.Optional[Datalayer] = None,
        cfg: t.Any = None,
        tokens_per_example: t.Optional[float] = None,
        min_interval_s: float = 1.0,
        connect: t.Optional[t.Callable[[], Datalayer]] = None,
        write_budget: float = 0.02,
    ):
        if not 0 < write_budget <= 1:
            raise ValueError(f"`write_budget` must be in (0, 1], got {write_budget!r}.")
        self.model = model
        self.connect = connect
        self.experiment_id = experiment_id
        self.db = db
        self.cfg = cfg
        self.tokens_per_example = tokens_per_example
        self.min_interval_s = min_interval_s
        self.write_budget = write_budget
        self._next_write_after = min_interval_s  # the wait after the last write
        self._start: t.Optional[t.Tuple[float, int]] = None
        self._written = 0.0
        self._loss: t.Optional[float] = None
        self._logged = False  # a log with a loss was written
        # trl's own count of the tokens trained on (`num_tokens` in its logs, summed over
        # the workers): first value seen with its time, and the latest.
        self._tokens: t.Optional[t.Tuple[float, float, float]] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["db"] = state["connect"] = None  # a datalayer never travels to Ray workers
        return state

    def _write(self, state, phase: str, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._written < self._next_write_after:
            return
        if self.db is None and self.connect is not None:
            self.db = self.connect()
        if self.db is None:
            from superduper_transformers.store.datalayer import datalayer_from_config

            self.db = datalayer_from_config(self.cfg)
        self._written = now
        try:
            # One column of the run's row on SQLite; superduper's apply of the run elsewhere.
            resume.update_run(
                self.db,
                resume.run_identifier(self.model, self.experiment_id),
                progress=self.snapshot(state, phase, now),
            )
        except Exception as e:  # progress is for people watching: never stop a training for it
            logging.warn(f"Could not record the progress of {self.model}: {type(e).__name__}: {e}")
        cost = time.time() - now
        self._next_write_after = max(self.min_interval_s, cost / self.write_budget)

    def snapshot(self, state, phase: str, now: float) -> t.Dict[str, t.Any]:
        """The progress of ``state`` as a JSON dict."""
        t0, step0 = self._start or (now, state.global_step)
        steps_done, elapsed = state.global_step - step0, now - t0
        rate = steps_done / elapsed if steps_done > 0 and elapsed > 0 else None
        tokens = getattr(state, "num_input_tokens_seen", 0) or 0
        if tokens and elapsed > 0:
            tokens_per_s = tokens / elapsed  # counted by the trainer (since this process started)
        elif self._tokens is not None and self._tokens[2] > self._tokens[0] and now > self._tokens[1]:
            # trl's count: what a stream of rows (Ray Data) gives, where no sample is cheap
            tokens_per_s = (self._tokens[2] - self._tokens[0]) / (now - self._tokens[1])
        elif rate and self.tokens_per_example and state.train_batch_size:
            tokens_per_s = rate * self.tokens_per_example * state.train_batch_size
        else:
            tokens_per_s = None
        left = max(state.max_steps - state.global_step, 0)
        return {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "loss": self._loss,
            "tokens_per_s": tokens_per_s,
            "eta_s": left / rate if rate else None,
            "updated_at": now,
            "phase": phase,
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = (time.time(), state.global_step)  # a resumed run starts mid-way
        if state.is_world_process_zero:
            self._write(state, TRAINING, force=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if logs and isinstance(logs.get("loss"), (int, float)):
            self._loss = float(logs["loss"])
        if logs and isinstance(logs.get("num_tokens"), (int, float)):
            first, since = (self._tokens or (float(logs["num_tokens"]), time.time(), 0.0))[:2]
            self._tokens = (first, since, float(logs["num_tokens"]))
        # The first log is always written: whoever watches sees a loss and a speed early.
        first = self._loss is not None and not self._logged
        self._write(state, TRAINING, force=first)
        self._logged |= first

    def on_step_end(self, args, state, control, **kwargs):
        if stop_requested():
            if state.is_world_process_zero:
                self._write(state, INTERRUPTED, force=True)
            raise TrainingStopped(
                f"Training of {self.model} stopped on request at step {state.global_step} "
                f"(run {self.experiment_id})."
            )

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._write(state, ENDED, force=True)
