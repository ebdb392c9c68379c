"""``Loop``: training follows new rows. After N new rows, a round trains a candidate from
``prod`` and the gate decides whether it replaces ``prod``.

A ``Loop`` is a superduper change trigger (``CDC``) on a table: the training rows, or a
feedback table whose judgements it first turns into training rows
(:func:`superduper_transformers.feedback.training_rows`). On every insert it counts the
rows no round used yet; at ``min_new_rows`` it runs a round:

1. *started*: the new rows and a replay sample of earlier ones are copied into the
   table ``loop_rows__<loop>`` under the round's id, and the ledger records which rows
   of the watched table the round used (:mod:`superduper_transformers.rounds`);
2. *trained*: the model's own trainer, with ``start_from=<alias>`` (the adapter of
   ``prod`` goes on training), reads those rows; the candidate is the checkpoint the
   training ends with;
3. *promoted* or *rejected*: :func:`superduper_transformers.gate.gate` scores candidate
   and ``prod`` on the validation rows with the metric and moves ``prod`` only when
   the candidate is not worse by ``margin``. A rejected candidate is kept (the newest
   ``keep_rejected`` rejected rounds' checkpoints; older ones are deleted), and the
   model's in-use pointer returns to where it was.

One round of a model runs at a time across processes (a lock file in the artifact
store, :func:`superduper_transformers.store.artifacts.round_lock`); a trigger that finds
it taken returns at once, and its rows count toward the next round. A round cut off
(the process killed) is finished by the next trigger: its rows were fixed when it
started, so its training resumes from its latest checkpoint; one that fails is
*abandoned* (its rows count again, its training run is marked abandoned).
"""

from __future__ import annotations

import dataclasses as dc
import math
import os
import random
import typing as t
import uuid

from superduper import logging
from superduper.base.annotations import trigger
from superduper.components.cdc import CDC

from superduper_transformers import checkpoint as ckpts
from superduper_transformers import feedback, gate, promote, resume, rounds
from superduper_transformers.store import artifacts, locks, records
from superduper_transformers.store.datalayer import migrate_component_tables

#: Training keywords a round sets (the gate evaluates; a round needs no eval set).
ROUND_TRAINING = {"eval_strategy": "no", "load_best_model_at_end": False}


class LoopError(ValueError):
    """Settings of a ``Loop`` that cannot work: the field, the value and the fix."""


class Loop(CDC):
    """Train the model ``model`` in rounds as rows arrive; promote a round's candidate only when it wins.

    :param model: Identifier of the trained ``LLM`` (its ``LLMTrainer`` trains each round).
    :param table: The training rows (the columns of the trainer's ``key``): the rows it
        counts, trains on and replays. Rows there when the loop is first applied count as
        earlier rows (replayed), not new ones.
    :param validation_table: The rows candidate and ``prod`` are scored on.
    :param validation_key: Its column of prompts.
    :param validation_target: Its column of expected answers.
    :param metric: ``"module:function"``, ``f(predictions, targets)``, higher is better.
    :param min_new_rows: New training rows that start a round.
    :param replay_fraction: The share of a round's rows drawn from earlier rows (0: only
        the new rows; 0.5: as many earlier rows as new ones), in [0, 1).
    :param replay_table: A table whose training rows count as earlier rows too (e.g. the
        model's first training rows), with the trainer's ``key`` columns; None: only the
        rows of ``table`` that rounds used.
    :param margin: How much worse than ``prod`` a candidate may score and be promoted
        (negative: how much better it must be).
    :param alias: The alias that serves; rounds start from it and move it.
    :param training_kwargs: Training keywords of a round over the trainer's own (e.g. a
        shorter ``max_steps``); evaluation is off in a round.
    :param feedback: A feedback table to watch instead of ``table``: each trigger first
        turns its new judgements into rows of ``table`` (needs ``listener``), whose columns
        (``x``/``y``, ``prompt``/``chosen``/``rejected``...) feed the trainer's ``key`` columns
        in that order.
    :param listener: The ``Listener`` whose outputs the feedback judges.
    :param keep_rejected: Rejected rounds whose checkpoints are kept for inspection.
    :param cdc_table: The watched table (set from ``feedback`` or ``table``).
    """

    model: str = ""
    table: str = ""
    validation_table: str = ""
    validation_key: str = "x"
    validation_target: str = "y"
    metric: str = ""
    min_new_rows: int = 8
    replay_fraction: float = 0.0
    replay_table: t.Optional[str] = None
    margin: float = 0.0
    alias: str = "prod"
    training_kwargs: t.Dict = dc.field(default_factory=dict)
    feedback: t.Optional[str] = None
    listener: t.Optional[str] = None
    keep_rejected: int = 3
    cdc_table: str = ""

    def postinit(self):
        """Check the settings that need no database; all problems in one error."""
        issues = settings_issues(self)
        if issues:
            raise LoopError(f"Loop `{self.identifier}`:\n" + "\n".join(f"- {i}" for i in issues))
        self.training_kwargs = dict(self.training_kwargs or {})
        self.cdc_table = self.feedback or self.table
        super().postinit()

    @property
    def rows_table(self) -> str:
        """The table of the rows each round trains on (``round_id`` names the round)."""
        return f"loop_rows__{self.identifier}"

    def create_jobs(self, context, event_type, ids=None, jobs=(), requires=None):
        """Migrate an older ``Loop`` table, check the model, its alias and the tables, before
        the apply writes anything."""
        if event_type == "apply":
            # A Loop table written before a field existed (``replay_table``): superduper-sql
            # would refuse the row.
            migrate_component_tables(self.db, (Loop,))
            check_in_db(self, self.db)
        return super().create_jobs(
            context=context, event_type=event_type, ids=ids, jobs=jobs, requires=requires
        )

    @trigger("apply")
    def start(self):
        """Record the rows already in ``table`` as earlier rows (the first apply only)."""
        rounds.ensure_tables(self.db)
        if rounds.has_ledger(self.db, self.identifier):
            return
        sources = [str(r["_id"]) for r in _training_rows(self.db, self.table)]
        rounds.write_ledger(self.db, self.identifier, rounds.BASELINE, {rounds.BASELINE: sources})

    @trigger("insert")
    def on_insert(self, ids: t.Optional[t.List[str]] = None):
        """Run a round when enough new rows arrived (see :meth:`step`)."""
        self.step()

    def step(self) -> t.Optional[rounds.Round]:
        """Finish a cut-off round, or start one when ``min_new_rows`` new rows arrived.

        :return: The round run (None: paused, too few new rows, or another process is in
            a round of the model).
        """
        db = self.db
        if rounds.paused(db, self.model):
            logging.info(f"Rounds of {self.model} are paused: new rows wait")
            return None
        try:
            with artifacts.round_lock(db, self.model, timeout=0):
                return self._step()
        except locks.LockTimeout:
            logging.info(f"A round of {self.model} runs in another process: new rows count toward the next")
            return None

    # -- a round, under the lock ----------------------------------------------
    def _step(self) -> t.Optional[rounds.Round]:
        db = self.db
        if rounds.paused(db, self.model):  # paused while this process waited
            return None
        cut_off = [r for r in rounds.rounds(db, self.identifier) if not r.finished]
        if cut_off:
            logging.warn(f"Round {cut_off[-1].number} of {self.identifier} was cut off: finishing it")
            return self._finish(cut_off[-1])
        if self.feedback:
            listener = db.load("Listener", self.listener)
            feedback.training_rows(db, listener, self._objective(), table=self.table, feedback=self.feedback)
        used = rounds.used_sources(db, self.identifier)
        rows = _training_rows(db, self.table)
        new = [r for r in rows if str(r["_id"]) not in used]
        if len(new) < self.min_new_rows:
            return None
        earlier = [r for r in rows if str(r["_id"]) in used] + self._replay_rows()
        return self._finish(self._start(new, earlier))

    def _replay_rows(self) -> t.List[t.Dict[str, t.Any]]:
        """The training rows of ``replay_table``, named like rows of ``table``; their ids
        are prefixed with the table's name in the ledger."""
        if not self.replay_table:
            return []
        pairs = self._column_pairs()
        return [
            {**{s: row[c] for c, s in pairs}, "_id": f"{self.replay_table}:{row['_id']}"}
            for row in _training_rows(self.db, self.replay_table)
        ]

    def _start(self, new, earlier) -> rounds.Round:
        db = self.db
        done = rounds.rounds(db, self.identifier)
        number = max((r.number for r in done), default=0) + 1
        f = self.replay_fraction
        wanted = math.ceil(len(new) * f / (1 - f)) if f else 0
        replay = random.Random(number).sample(earlier, min(wanted, len(earlier)))
        r = rounds.Round(self.identifier, self.model, number, uuid.uuid4().hex[:12])
        pairs = self._column_pairs()
        _rows_table(db, self.rows_table, self.table, dict(pairs))
        db[self.rows_table].insert(
            [
                {**{c: row[s] for c, s in pairs}, "round_id": r.round_id, "_fold": "train"}
                for row in new + replay
            ]
        )
        kinds = {"new": [x["_id"] for x in new], "replay": [x["_id"] for x in replay]}
        rounds.write_ledger(db, self.identifier, r.round_id, kinds)
        prod = promote.resolve_alias(db, self.model, self.alias).identifier
        in_use = getattr(db.load("LLM", self.model).adapter_id, "identifier", None) or ""
        # The round exists from this row on: rows copied above without it are never read.
        r = rounds.record(
            db, r, rounds.STARTED, new_rows=len(new), replay_rows=len(replay), prod=prod, in_use=in_use
        )
        logging.info(f"Round {number} of {self.identifier}: {len(new)} new rows, {len(replay)} replayed")
        return r

    def _finish(self, r: rounds.Round) -> rounds.Round:
        try:
            if r.state == rounds.STARTED:
                candidate, experiment_id = self._train(r)
                r = rounds.record(
                    self.db, r, rounds.TRAINED, candidate=candidate, experiment_id=experiment_id
                )
            return self._decide(r)
        except Exception as e:  # noqa: BLE001 - the insert that triggered the round must not fail
            logging.error(f"Round {r.number} of {self.identifier} failed, abandoned: {type(e).__name__}: {e}")
            return self._abandon(r, f"{type(e).__name__}: {e}")

    def _train(self, r: rounds.Round) -> t.Tuple[str, str]:
        db = self.db
        before = {run.experiment_id for run in records.runs(db, self.model, resume.FINISHED)}
        llm = db.load("LLM", self.model)
        trainer = round_trainer(llm.trainer, db[self.rows_table], r, self.alias, self.training_kwargs)
        db.apply(fresh_copy(llm, trainer), force=True)
        run = resume.latest_run(db, self.model)
        if run is None or run.experiment_id in before or run.state != resume.FINISHED:
            raise LoopError(
                f"the training of round {r.number} did not run to its end (latest run: "
                f"{getattr(run, 'experiment_id', None)}, {getattr(run, 'state', None)})."
            )
        trained = getattr(db.load("LLM", self.model).adapter_id, "identifier", None)
        mine = {c["identifier"] for c in ckpts.list_checkpoints(db, self.model, run.experiment_id)}
        if trained not in mine:
            raise LoopError(
                f"the training of round {r.number} left no checkpoint of its run {run.experiment_id}."
            )
        return trained, run.experiment_id

    def _decide(self, r: rounds.Round) -> rounds.Round:
        db = self.db
        by = f"loop {self.identifier} round {r.number}"
        if promote.promotions(db, self.model).aliases.get(self.alias) == r.candidate:
            # Cut off after the promotion, before its row: the gate decided already.
            return rounds.record(db, r, rounds.PROMOTED, detail="promoted before the round was cut off")
        row = gate.gate(
            db,
            self.model,
            r.candidate,
            table=self.validation_table,
            key=self.validation_key,
            target=self.validation_target,
            metric=self.metric,
            margin=self.margin,
            alias=self.alias,
            by=by,
        )
        state = rounds.PROMOTED if row["decision"] == "promoted" else rounds.REJECTED
        r = rounds.record(
            db,
            r,
            state,
            comparison=row["comparison"],
            score_candidate=row["score_candidate"],
            score_prod=row["score_prod"],
            margin=row["margin"],
            prod=row["prod"],
        )
        if state == rounds.REJECTED:
            self._restore_in_use(r)
            self._prune_rejected()
        logging.info(f"{self.identifier}: {r.describe()}")
        return r

    def _abandon(self, r: rounds.Round, why: str) -> rounds.Round:
        db = self.db
        for run in resume.unfinished_runs(db, self.model):
            if run.started_at >= r.started_at:  # the round's own run: never resumed by another round
                run.state = resume.ABANDONED
                db.apply(run, force=True, jobs=False)
        self._restore_in_use(r)
        return rounds.record(db, r, rounds.ABANDONED, detail=why[:500])

    def _restore_in_use(self, r: rounds.Round) -> None:
        """Point the model back at the checkpoint it used before the round."""
        now = getattr(self.db.load("LLM", self.model).adapter_id, "identifier", None)
        if r.in_use and now != r.in_use:
            promote.promote(self.db, self.model, r.in_use, by=f"loop {self.identifier} round {r.number}")

    def _prune_rejected(self) -> None:
        """Delete the checkpoints of rejected rounds older than the newest ``keep_rejected``."""
        rejected = [r for r in rounds.rounds(self.db, self.identifier) if r.state == rounds.REJECTED]
        for r in rejected[: max(len(rejected) - self.keep_rejected, 0)]:
            for c in ckpts.list_checkpoints(self.db, self.model, r.experiment_id):
                try:
                    promote.delete_checkpoint(
                        self.db, self.model, c["identifier"], by=f"loop {self.identifier}"
                    )
                except promote.PromotionError as e:  # protected meanwhile (promoted by hand, in use)
                    logging.info(f"Keeping {c['identifier']}: {e}")

    def _objective(self) -> str:
        return getattr(self.db.load("LLM", self.model).trainer, "objective", None) or "sft"

    def _column_pairs(self) -> t.List[t.Tuple[str, str]]:
        """``(trainer column, column of table)``: the trainer's columns, read in the same order
        from ``table`` (with ``feedback``, from the columns feedback rows have)."""
        columns = self._columns()
        source = list(feedback.OBJECTIVES[self._objective()]) if self.feedback else columns
        return list(zip(columns, source))

    def _columns(self) -> t.List[str]:
        from superduper_transformers.hf import objectives

        trainer = self.db.load("LLM", self.model).trainer
        return objectives.get(trainer.objective).columns(trainer.key)


def fresh_copy(llm, trainer):
    """``llm`` with ``trainer``, built anew as a user builds it (no version, no run marker).

    superduper skips an apply equal to the stored row and sets up a stored copy before
    comparing; the setup of an ``LLM`` with an interrupted run shows the run on it
    (:func:`superduper_transformers.resume.show_interrupted_run`). A new object without
    the marker differs, so the apply of a cut-off round's model trains (resumes) again.
    """
    from superduper.base.datatype import ComponentRef

    fields = {f.name: getattr(llm, f.name) for f in dc.fields(llm) if f.name != "identifier"}
    fields = {k: v.unpack() if isinstance(v, ComponentRef) else v for k, v in fields.items()}
    fields["metric_values"] = {k: v for k, v in (llm.metric_values or {}).items() if k != "training_run"}
    fields["trainer"] = trainer
    return type(llm)(llm.identifier, **fields)


def round_trainer(trainer, table, r: rounds.Round, alias: str, overrides: t.Mapping[str, t.Any]):
    """The model's trainer for round ``r``: its settings, the round's rows, from ``alias``.

    :param trainer: The model's ``LLMTrainer``.
    :param table: The query of the loop's rows table (``db[loop.rows_table]``).
    :param r: The round.
    :param alias: Where training starts.
    :param overrides: The loop's ``training_kwargs``.
    """
    from superduper.components.model import Trainer

    from superduper_transformers import trainer_args
    from superduper_transformers.trainer import LLMTrainer

    base = {f.name for f in dc.fields(Trainer)} - {"key", "compute_kwargs"}
    fields = {f.name: getattr(trainer, f.name) for f in dc.fields(LLMTrainer) if f.name not in base}
    kwargs = {k: v for k, v in trainer.training_kwargs.items() if k != "metric_for_best_model"}
    kwargs.update(ROUND_TRAINING, **overrides)
    root = trainer_args.output_dir_for(trainer, r.model)
    if os.path.basename(root).startswith("round-"):  # the trainer of an earlier round
        root = os.path.dirname(root)
    kwargs["output_dir"] = os.path.join(root, f"round-{r.number}")
    fields.update(
        select=table.filter(table["round_id"] == r.round_id).select(),
        start_from=alias,
        training_kwargs=kwargs,
        early_stopping_patience=None,
        early_stopping_threshold=None,
        record_generations=None,
    )
    return LLMTrainer(trainer.identifier, **fields)


def _training_rows(db, table: str) -> t.List[t.Dict[str, t.Any]]:
    """The rows of ``table`` a round may train on (not ``_fold='valid'``), with ``_id`` as text."""
    if table not in db.show("Table"):
        return []
    pid = db[table].primary_id.execute()
    return [{**r, "_id": str(r[pid])} for r in db[table].select().execute() if r.get("_fold") != "valid"]


def _rows_table(db, name: str, source: str, columns: t.Mapping[str, str]) -> None:
    """Create the loop's rows table: ``columns`` (trainer column -> column of ``source``,
    whose type it takes), ``round_id`` and ``_fold``."""
    from superduper import Table

    if name not in db.show("Table"):
        fields = db.load("Table", source).fields
        typed = {c: fields.get(s, "str") for c, s in columns.items()}
        db.apply(Table(name, fields={**typed, "round_id": "str", "_fold": "str"}), force=True)


def settings_issues(loop: Loop) -> t.List[str]:
    """What is wrong with the settings of ``loop`` that needs no database."""
    issues = []
    for name in ("model", "table", "validation_table", "metric"):
        if not getattr(loop, name):
            issues.append(f"`{name}` is required.")
    if loop.metric and ":" not in loop.metric:
        issues.append(f"`metric`={loop.metric!r} must be 'module:function', e.g. 'my_metrics:exact_match'.")
    if not isinstance(loop.min_new_rows, int) or loop.min_new_rows < 1:
        issues.append(
            f"`min_new_rows`={loop.min_new_rows!r} must be a positive integer (rows that start a round)."
        )
    if not isinstance(loop.replay_fraction, (int, float)) or not 0 <= loop.replay_fraction < 1:
        issues.append(
            f"`replay_fraction`={loop.replay_fraction!r} must be in [0, 1): the share of a round's "
            "rows drawn from earlier rows (0.5: as many earlier rows as new ones)."
        )
    if not isinstance(loop.margin, (int, float)) or not math.isfinite(loop.margin):
        issues.append(f"`margin`={loop.margin!r} must be a finite number.")
    if not isinstance(loop.keep_rejected, int) or loop.keep_rejected < 0:
        issues.append(f"`keep_rejected`={loop.keep_rejected!r} must be 0 or a positive integer.")
    if bool(loop.feedback) != bool(loop.listener):
        issues.append(
            f"`feedback`={loop.feedback!r} and `listener`={loop.listener!r}: set both (the feedback "
            "table and the Listener whose outputs it judges) or neither (watch `table`)."
        )
    if not isinstance(loop.training_kwargs or {}, dict):
        issues.append(f"`training_kwargs`={loop.training_kwargs!r} must be a dict of training keywords.")
    return issues


def check_in_db(loop: Loop, db) -> None:
    """Check what the loop needs in ``db`` (model, trainer, alias, tables, metric); all at once.

    :raises LoopError: naming each problem and its fix, before anything is written.
    """
    from superduper_transformers.compare import CompareError, load_metric

    issues = []
    tables = db.show("Table")
    models = db.show("LLM")
    trainer = db.load("LLM", loop.model).trainer if loop.model in models else None
    if loop.model not in models:
        issues.append(f"`model`={loop.model!r} is not an LLM in the database (models: {sorted(models)}).")
    elif trainer is None or not hasattr(trainer, "objective"):
        issues.append(f"`model`={loop.model!r} has no LLMTrainer: a round continues the model's own trainer.")
    elif loop.alias not in promote.promotions(db, loop.model).aliases:
        issues.append(
            f"`alias`={loop.alias!r} is not an alias of `{loop.model}` (rounds start from it): set it "
            f"with `promote(db, {loop.model!r}, CHECKPOINT, alias={loop.alias!r})`."
        )
    elif loop.feedback and trainer.objective not in feedback.OBJECTIVES:
        issues.append(
            f"`feedback`={loop.feedback!r}: feedback becomes rows of {sorted(feedback.OBJECTIVES)} only; "
            f"`{loop.model}` trains `{trainer.objective}`."
        )
    if loop.feedback:
        if loop.listener not in db.show("Listener"):
            issues.append(f"`listener`={loop.listener!r} is not a Listener in the database.")
        if loop.feedback not in tables:
            issues.append(
                f"`feedback`={loop.feedback!r} is not a table: create it with `feedback.feedback_table(db)`."
            )
    elif loop.table not in tables:
        issues.append(
            f"`table`={loop.table!r} is not a table in the database (tables: {_user_tables(tables)})."
        )
    elif trainer is not None and hasattr(trainer, "objective"):
        issues += _missing_columns(db, loop, "table", loop.table, trainer)
    if loop.replay_table and loop.replay_table not in tables:
        issues.append(
            f"`replay_table`={loop.replay_table!r} is not a table in the database "
            f"(tables: {_user_tables(tables)})."
        )
    elif loop.replay_table and trainer is not None and hasattr(trainer, "objective"):
        issues += _missing_columns(db, loop, "replay_table", loop.replay_table, trainer)
    if loop.validation_table not in tables:
        issues.append(
            f"`validation_table`={loop.validation_table!r} is not a table in the database "
            f"(tables: {_user_tables(tables)})."
        )
    else:
        row = db[loop.validation_table].select().limit(1).execute()
        missing = [c for c in (loop.validation_key, loop.validation_target) if row and c not in row[0]]
        if not row:
            issues.append(f"`validation_table`={loop.validation_table!r} has no rows to score candidates on.")
        elif missing:
            issues.append(f"`validation_table`={loop.validation_table!r} has no column(s) {missing}.")
    try:
        load_metric(loop.metric)
    except CompareError as e:
        issues.append(str(e))
    if issues:
        raise LoopError(f"Loop `{loop.identifier}`:\n" + "\n".join(f"- {i}" for i in issues))
    if loop.feedback:
        feedback.training_table(db, loop.table, trainer.objective)


def _missing_columns(db, loop: Loop, field: str, table: str, trainer) -> t.List[str]:
    """The problem, if any, of ``table`` (the loop's ``field``) lacking the trainer's columns."""
    from superduper_transformers.hf import objectives

    wanted = objectives.get(trainer.objective).columns(trainer.key)
    missing = [c for c in wanted if c not in db.load("Table", table).fields]
    if not missing:
        return []
    return [
        f"`{field}`={table!r} has no column(s) {missing}: a round trains `{loop.model}`'s "
        f"trainer, whose `key` reads {wanted}."
    ]


def _user_tables(tables) -> t.List[str]:
    return sorted(x for x in tables if not x[:1].isupper() and not x.startswith("_"))
