"""Evaluation on generations: superduper's ``Validation`` after training, and sample
generations recorded at each evaluation.

Eval losses are recorded by the HF trainer during training; what a model *answers*
is measured here, with the user's superduper ``Metric`` components over the
``Validation``'s datasets, once training is done (the results go where superduper's
own ``Model.validate_in_db`` puts them: ``model.metric_values['<dataset>/<version>']``).
"""

from __future__ import annotations

import itertools
import typing as t

from superduper import logging

from superduper_transformers.hf.data import build_prompt

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Where sample generations are recorded: ``model.metric_values[GENERATIONS]``.
GENERATIONS = "generations"


def validation_key(dataset: t.Any) -> str:
    """The ``metric_values`` key of a dataset's results, as superduper writes it."""
    return f"{dataset.identifier}/{dataset.version}"


def validate_after_training(model: t.Any, db: Datalayer) -> t.Dict[str, t.Dict[str, float]]:
    """Run the ``Metric``s of ``model.validation`` on each of its datasets; store the results.

    Runs in ``fit`` on the trained model (the checkpoint it now points at), in the
    process that trained or drove the training. superduper schedules its own validation
    job after ``fit`` too, but in an order that varies between runs and with an apply
    that needs a confirmation: doing it here makes it part of every training.

    :param model: The trained ``LLM`` (its ``validation`` may be None).
    :param db: The datalayer.
    :return: ``{'<dataset>/<version>': {metric: value}}`` (empty without metrics).
    """
    validation = getattr(model, "validation", None)
    if validation is None or not validation.metrics:
        return {}
    model._pipeline = None  # predict with the weights training left, not a copy loaded before
    out = {}
    for dataset in validation.datasets:
        dataset.db = dataset.db or db
        results = model.validate(key=validation.key, dataset=dataset, metrics=validation.metrics)
        out[validation_key(dataset)] = {k: float(v) for k, v in results.items()}
        logging.info(
            f"{model.identifier}: validation on {dataset.identifier}: {out[validation_key(dataset)]}"
        )
    model.metric_values.update(out)
    model.save()
    return out


def generation_samples(
    n: t.Optional[int],
    eval_rows: t.Mapping[str, t.Sequence[t.Mapping]],
    X: str,
    y: t.Optional[str],
    tokenizer: t.Any,
    prompt_template: str,
    chat_format: bool,
) -> t.List[t.Dict[str, str]]:
    """The first ``n`` rows of the first eval set as ``{"set", "input", "prompt", "target"}``.

    ``prompt`` is the text the model is asked to continue, built as training built it.

    :param n: ``LLMTrainer.record_generations`` (None or 0: none).
    :param eval_rows: Evaluation rows by eval set (``trainer.named_eval_rows``).
    :param X: The input column.
    :param y: The output column (None: whole-text learning; no target).
    :param tokenizer: The tokenizer (for a chat template).
    :param prompt_template: The model's ``prompt_template``.
    :param chat_format: ``LLMTrainer.setup_chat_format``.
    """
    if not n or not eval_rows:
        return []
    name, rows = next(iter(eval_rows.items()))
    return [
        {
            "set": name,
            "input": str(row[X]),
            "prompt": build_prompt(tokenizer, row[X], prompt_template, chat_format),
            "target": str(row[y]) if y is not None else "",
            "special_tokens": not chat_format,  # a chat template writes its own
        }
        for row in itertools.islice(rows, n)  # rows may be read in pages: no list
    ]
