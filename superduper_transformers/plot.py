"""Plot a training run from the db: training loss and every eval metric over steps.

One panel for the loss (the training loss and each eval set's loss), then one panel per
metric of the run's objective (DPO's rewards, GRPO's reward...: the training log's line
and each eval set's), then one per other eval metric with one line per eval set; the run's stored checkpoints are marked by
vertical lines, the one the model uses and those with an alias are named. Everything is
read from the db (:func:`superduper_transformers.history.metric_history`), so it works
after the training folder is gone. Needs matplotlib (pip extra ``plot``).
"""

from __future__ import annotations

import dataclasses as dc
import os
import typing as t

from superduper_transformers import checkpoint as ckpts
from superduper_transformers import history as hist
from superduper_transformers import promote
from superduper_transformers._optional import require

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

Series = t.Dict[str, t.Tuple[t.List[int], t.List[float]]]


@dc.dataclass
class PlotData:
    """What :func:`plot_history` drew.

    :param path: The image file written.
    :param experiment_id: The run plotted.
    :param panels: ``{panel title: {line label: (steps, values)}}``, top to bottom.
    :param checkpoints: Steps of the run's stored checkpoints (vertical lines).
    :param marked: ``{step: label}`` of the named checkpoints (``in use``, aliases).
    :param size: ``(width, height)`` of the image in pixels.
    """

    path: str
    experiment_id: str
    panels: t.Dict[str, Series]
    checkpoints: t.List[int]
    marked: t.Dict[int, str]
    size: t.Tuple[int, int]


def history_panels(history: hist.History) -> t.Dict[str, Series]:
    """``{panel title: {line label: (steps, values)}}``: the loss first, then each metric
    of the run's objective (trained on and evaluated), then each other eval metric.

    :param history: A run's log history.
    """
    from superduper_transformers.hf import objectives

    evaluations = history.evaluations()
    panels: t.Dict[str, Series] = {}
    # The objective's metrics measure what it learns in training too (SFT's: the loss only).
    for metric in dict.fromkeys(("loss", *objectives.get(history.objective).eval_metrics)):
        lines: Series = {}
        steps, values = history.training(metric)
        if steps:
            lines["train"] = (steps, values)
        lines.update(evaluations.pop(metric, {}))
        if lines:
            panels[metric] = lines
    panels.update(evaluations)
    return panels


def checkpoint_marks(db: Datalayer, model: str, experiment_id: str) -> t.Tuple[t.List[int], t.Dict[int, str]]:
    """Steps of the run's stored checkpoints, and labels of the named ones (in use, aliases)."""
    rows = ckpts.list_checkpoints(db, model, experiment_id)
    by_id = {r["identifier"]: r["step"] for r in rows}
    names: t.Dict[int, t.List[str]] = {}
    try:
        in_use = getattr(db.load("LLM", model).adapter_id, "identifier", None)
    except (ckpts.CheckpointError, FileNotFoundError):  # its folder is gone: still plot the rest
        in_use = None
    if in_use in by_id:
        names.setdefault(by_id[in_use], []).append("in use")
    for alias, identifier in sorted(promote.promotions(db, model).aliases.items()):
        if identifier in by_id:
            names.setdefault(by_id[identifier], []).append(alias)
    return sorted(by_id.values()), {step: ", ".join(n) for step, n in names.items()}


def plot_history(
    db: Datalayer,
    model: str,
    out: str,
    experiment_id: t.Optional[str] = None,
    width: int = 1000,
    panel_height: int = 300,
    dpi: int = 100,
) -> PlotData:
    """Draw a run's training loss and eval metrics over steps into the image file ``out``.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param out: The image file to write (``.png``; any format matplotlib knows by its suffix).
    :param experiment_id: The run (default: the one whose checkpoint the model uses, else the latest).
    :param width: Image width in pixels.
    :param panel_height: Height of each panel in pixels.
    :param dpi: Pixels per inch of the image.
    :raises HistoryError: unknown model or run, or a run that logged nothing.
    :raises ValueError: when the folder of ``out`` does not exist.
    """
    require("matplotlib", "plot", "Plotting a training run")
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"`out`={out!r}: the folder {folder} does not exist. Create it first.")
    history = hist.metric_history(db, model, experiment_id)
    panels = history_panels(history)
    if not panels:
        raise hist.HistoryError(
            f"Run {history.experiment_id} of `{model}` logged no loss or eval metric yet: nothing to "
            "plot. Set `logging_steps` (and `eval_strategy`) below the number of steps trained."
        )
    steps, marked = checkpoint_marks(db, model, history.experiment_id)
    fig = Figure(figsize=(width / dpi, panel_height * len(panels) / dpi), dpi=dpi)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    # One colour per line label (train, each eval set) in every panel.
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    colour = {label: f"C{i}" for i, label in enumerate(labels)}
    for ax, (title, lines) in zip(axes, panels.items()):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=label, color=colour[label])
        for i, step in enumerate(steps):
            ax.axvline(step, color="grey", linestyle=":", linewidth=1, label="checkpoint" if i == 0 else None)
        for step, label in marked.items():
            ax.axvline(step, color="tab:red", linestyle="--", linewidth=1.2)
            ax.annotate(
                label,
                (step, 1),
                xycoords=("data", "axes fraction"),
                xytext=(-3, -4),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="top",
                color="tab:red",
                fontsize=8,
            )
        ax.set_ylabel(title)
        ax.ticklabel_format(axis="y", useOffset=False)  # plain values, not "+5.54" offsets
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_title(f"{model}: run {history.experiment_id}")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    size = (int(round(width)), int(round(panel_height * len(panels))))
    return PlotData(os.path.abspath(out), history.experiment_id, panels, steps, marked, size)
