"""``train CONFIG.yaml [key=value ...]``: fine-tune the model a config describes.

It reads like a recipe: check the config whole (every problem at once), connect, run
the preflight (the same checks ``db.apply`` runs, before anything is written), train,
report. Ctrl-C stops at the end of the current step: the run stays in the database,
interrupted, and the same command resumes it from its latest checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import typing as t

from superduper_transformers.cli import config as schema
from superduper_transformers.cli.common import PROG, CliError, connect, is_tty, shown_command

#: LLMTrainer fields that a config sets elsewhere (or that are the component's own business).
_NOT_IN_TRAINER = {
    "key": "data.key",
    "select": "data.table / data.filter",
    "mix": "data.mix",
    "training_kwargs": "trainer",
}


def register(sub) -> None:
    """Add ``train`` to the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="fine-tune a model from a YAML config (see examples/)",
        description="Fine-tune the model a YAML config describes. Overrides: dotted keys, YAML "
        "values, e.g. `trainer.learning_rate=1e-3 model.identifier=mine`.",
    )
    p.add_argument("config", help="YAML file: model:, data:, trainer: (and optionally db:)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config value")
    p.add_argument("--check", action="store_true", help="check the config and the data, do not train")
    p.set_defaults(run=train)


def trainer_settings(raw: t.Dict[str, t.Any], issues: t.List[str]) -> t.Dict[str, t.Any]:
    """The ``trainer:`` settings whose names and types are right; the others become issues."""
    import typing

    from superduper_transformers.hf import objectives
    from superduper_transformers.trainer import _LLMTrainerFields

    own = typing.get_type_hints(_LLMTrainerFields)
    own = {k: own[k] for k in _LLMTrainerFields.__annotations__ if k not in _NOT_IN_TRAINER}
    objective = raw.get("objective") or "sft"
    if objective not in objectives.names():
        issues.append(f"`trainer.objective` must be one of {objectives.names()}, got {objective!r}.")
        return {}
    fields = objectives.config_fields(objective)
    hints = typing.get_type_hints(objectives.load(objectives.get(objective).config_class))
    known = set(own) | set(fields)
    good = {}
    for key, value in raw.items():
        other = None
        if key not in known:
            other = next((o for o in objectives.names() if key in objectives.config_fields(o)), None)
        if key in _NOT_IN_TRAINER:
            issues.append(
                f"`trainer.{key}` is set by `{_NOT_IN_TRAINER[key]}` in this config: move it there."
            )
        elif other is not None:
            issues.append(
                f"`trainer.{key}` is a setting of the `{other}` objective, and `trainer.objective` is "
                f"`{objective}`: set `trainer.objective: {other}`, or remove `trainer.{key}`."
            )
        elif key not in known:
            issues.append(schema.unknown_key_issue("trainer.", key, known))
        elif not schema.type_ok(value, own.get(key, hints.get(key, t.Any))):
            expected = schema.type_name(own.get(key, hints.get(key)))
            issues.append(f"`trainer.{key}` must be {expected}, got {value!r}.")
        else:
            good[key] = value
    return good


def build_trainer(identifier: str, key: t.Any, raw: t.Dict[str, t.Any], output_root: str, issues):
    """The ``LLMTrainer`` of ``trainer:`` (no query yet: that needs the db); None on problems.

    Its own validation (``trainer_args.validate_trainer``) reports the bad values.
    """
    from superduper_transformers import LLMTrainer
    from superduper_transformers.trainer_args import ConfigError, safe_folder_name

    settings = trainer_settings(raw, issues)
    settings.setdefault("output_dir", os.path.join(output_root, safe_folder_name(identifier)))
    settings.setdefault("disable_tqdm", not is_tty())  # a progress bar only for a person watching
    key = key if isinstance(key, str) else tuple(key)
    try:
        return LLMTrainer(f"{identifier}-trainer", key=key, select=None, **settings)
    except ConfigError as e:
        for line in str(e).splitlines():
            if line.startswith("- `key`"):
                issues.append("`data.key`" + line[7:])  # the key as the config spells it
            elif line.startswith("- `"):
                issues.append("`trainer." + line[3:])
            elif line.startswith("- "):
                issues.append(line[2:])
    return None


def build_llm(config: schema.TrainConfig, output_root: str, issues: t.List[str]):
    """The ``LLM`` with its ``LLMTrainer``; None on problems (added to ``issues``)."""
    from superduper_transformers import LLM

    m = config.model
    trainer = build_trainer(m.identifier, config.data.key, config.trainer, output_root, issues)
    try:
        llm = LLM(
            m.identifier,
            model_name_or_path=m.model_name_or_path,
            prompt_template=m.prompt_template,
            predict_kwargs=m.predict_kwargs,
            model_kwargs=m.model_kwargs,
            tokenizer_kwargs=m.tokenizer_kwargs,
            trainer=trainer,
        )
    except ValueError as e:
        issues.append(str(e))
        return None
    return llm if trainer is not None else None


def select_rows(db, name: str, where: t.Dict[str, t.Any], setting: str = "data"):
    """The query of the training rows: the table ``name``, filtered on ``where``.

    :param setting: Where the config names them (``data``, ``data.mix[1]``), for messages.
    """
    tables = [n for n in db.show("Table") if not n[:1].isupper()]
    if name not in tables:
        raise CliError(
            f"`{setting}.table`={name!r} is not a table in the database (tables: {sorted(tables) or 'none'}). "
            f"Import rows first: `{PROG} import-data FILE.jsonl --table {name}`."
        )
    fields = set(db.load("Table", name).fields)
    unknown = [c for c in where if c not in fields]
    if unknown:
        columns = sorted(f for f in fields if not f.startswith("_") or f == "_fold")
        raise CliError(
            f"`{setting}.filter` names column(s) {unknown} that the table `{name}` lacks; its "
            f"columns: {columns}."
        )
    table = db[name]
    query = table.select()
    for column, value in where.items():
        query = query.filter(table[column] == value)
    return query


def set_rows(db, llm, data: schema.DataSection) -> None:
    """Give the trainer its rows: ``select`` of ``data.table``, or the queries of ``data.mix``."""
    from superduper_transformers.trainer_args import ConfigError

    if data.mix is None:
        llm.trainer.select = select_rows(db, data.table, data.filter)
        return
    mix = [
        {"select": select_rows(db, name, where, f"data.mix[{i}]"), "weight": weight}
        for i, (name, where, weight) in enumerate(data.selections())
    ]
    try:
        llm.trainer.use_mix(mix)
    except ConfigError as e:
        raise CliError(str(e).replace("`mix[", "`data.mix[")) from e


def _check(path: str, overrides: t.Sequence[str], output_root: str):
    config, raw, issues = schema.load_config(path, overrides)
    if config is not None:
        llm = build_llm(config, output_root, issues)
    elif isinstance(raw.get("trainer"), dict):  # report its problems too, in the same round
        build_trainer("model", "text", raw["trainer"], output_root, issues)
    if issues:
        raise CliError(
            f"{path}: {len(issues)} problem(s), nothing was run:\n" + "\n".join(f"- {i}" for i in issues)
        )
    return config, llm


def train(args) -> int:
    from superduper_transformers.trainer import preflight

    config, llm = _check(args.config, args.overrides, os.path.join(os.path.abspath(args.data), "training"))
    db = connect(args, config.db, config.artifact_store)
    set_rows(db, llm, config.data)
    try:
        preflight(llm, db)
    except (ValueError, OSError, ImportError) as e:
        raise CliError(f"{args.config}: {e}") from e
    if args.check:
        from superduper_transformers.plan import fold_rows

        count = {f: len(fold_rows(llm.trainer, db, f)) for f in ("train", "valid")}
        tables = ", ".join(f"`{name}`" for name, _, _ in config.data.selections())
        print(
            f"{args.config}: the config and the data are fine: {count['train']} training rows, "
            f"{count['valid']} validation rows in {tables}."
        )
        return 0
    return _run(db, llm, args)


def _latest_run(db, model: str):
    from superduper_transformers.cli.query import _runs_of

    found = _runs_of(db, model)
    return found[-1] if found else None


def already_trained(db, llm) -> t.Optional[t.Any]:
    """The finished run of the stored ``llm`` when it was trained with these settings.

    Applying the config's freshly built ``LLM`` again would not train (the settings are
    the same) but would overwrite the stored row: its checkpoint (``adapter_id``) and
    metrics. A finished model is left alone instead.
    """
    from superduper_transformers import resume
    from superduper_transformers.trainer import run_settings

    if llm.identifier not in db.show("LLM") or resume.is_interrupted(db, llm.identifier):
        return None
    stored = db.load("LLM", llm.identifier)
    run = _latest_run(db, llm.identifier)
    if stored.trainer is None or run is None or run.state != resume.FINISHED:
        return None
    same = run_settings(stored, stored.trainer) == run_settings(llm, llm.trainer)
    return run if same else None


def _run(db, llm, args) -> int:
    from superduper_transformers.checkpoint import list_checkpoints
    from superduper_transformers.launch import progress

    done = already_trained(db, llm)
    if done is not None:
        print(
            f"Nothing to train: {llm.identifier} was trained with these settings already (run "
            f"{done.experiment_id}, finished at step {done.progress.get('step', '?')}). Change a "
            "setting or `model.identifier` to train again (`max_steps`, `save_steps` and other "
            "bookkeeping do not count)."
        )
        return 0
    command, hidden = shown_command(args.argv)
    # The db password is never printed: the user types it back in.
    password = "\n  (with the db password in place of ***)" if hidden else ""
    print(
        f"Training {llm.identifier} (Ctrl-C stops after the current step; `{command}` resumes){password}",
        flush=True,
    )

    def on_sigint(signum, frame):
        progress.request_stop()
        print("\nStopping after this step (Ctrl-C again to stop now)...", file=sys.stderr, flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    from loguru import logger

    progress.clear_stop()
    previous = signal.signal(signal.SIGINT, on_sigint)
    # superduper logs a failed job with its traceback before re-raising the error: the
    # error reaches this command, which says what happened (a stop on request is no failure).
    logger.disable("superduper.base.metadata")
    try:
        db.apply(llm, force=True)
    except progress.TrainingStopped:
        run = _latest_run(db, llm.identifier)
        ckpts = list_checkpoints(db, llm.identifier, run.experiment_id)
        last = f"step {ckpts[-1]['step']}" if ckpts else "none yet (it restarts from step 0)"
        print(
            f"Interrupted: run {run.experiment_id} of {llm.identifier} stopped at step "
            f"{run.progress.get('step', '?')}; its latest checkpoint in the database: {last}. "
            f"The database is consistent. Resume with:\n  {command}{password}",
            file=sys.stderr,
        )
        return 130
    finally:
        logger.enable("superduper.base.metadata")
        signal.signal(signal.SIGINT, previous)
        progress.clear_stop()
    run = _latest_run(db, llm.identifier)
    if run is None:
        raise CliError(f"{llm.identifier} was applied, but no training ran (see the log above).")
    trained = db.load("LLM", llm.identifier)
    using = getattr(trained.adapter_id, "identifier", None)
    steps = [r["step"] for r in list_checkpoints(db, llm.identifier, run.experiment_id)]
    print(
        f"Trained {llm.identifier}: run {run.experiment_id} {run.state} at step "
        f"{run.progress.get('step', '?')}; checkpoints at steps {steps}; the model uses {using}."
    )
    return 0
