"""Which checkpoint a model serves: promote, roll back, and named aliases (``prod``, ``candidate``).

A model uses the checkpoint its ``adapter_id`` points at (the *in-use pointer*; training
moves it as it saves). :func:`promote` points it at another stored checkpoint of the same
model, after verifying the checkpoint's files against its manifest; :func:`rollback`
returns it to the checkpoint it used before the last promotion. An *alias* is a named
pointer to a checkpoint that leaves the in-use pointer alone (``set_alias``); it is
promoted and rolled back the same way, by name.

Everything is recorded in one ``Promotions`` row per model (identifier = the model's):
``aliases`` (alias -> checkpoint identifier) and ``history``, one entry per change:
``{"pointer": "in_use" | alias, "action": "promote" | "rollback" | "delete" | "apply" | "train" |
"reject", "from", "to", "by", "time"}`` (``delete``: a forced :func:`delete_checkpoint` removed the
alias; ``apply``: an apply of the model with another ``adapter_id``; ``train``: the first
checkpoint of a training run, with ``"run"``: its id; the run's later checkpoints are its own
rows; ``reject``: a gate refused a ``candidate`` for the alias, which did not move). An apply
without ``adapter_id`` keeps the stored pointer (``LLM.keep_stored_pointer``). A gate's entries
also hold its ``note`` (both scores, the margin, the comparison).
A plain ``db.load`` user finds the ``prod`` checkpoint with
``db.load("Checkpoint", db.load("Promotions", model).aliases["prod"])``, or with
:func:`resolve_alias` / :func:`load_model` here.

Pruning (``save_total_limit``) never deletes a checkpoint an alias points at, the one a
promotion or rollback pointed the model at, nor the one :func:`rollback` would return to
(:func:`protected_checkpoints`). :func:`delete_checkpoint` (what users call to delete one)
refuses those too unless ``force=True``, and always refuses the checkpoint in use.

Promotions, rollbacks, deletions and pruning of one model run one at a time, in every
process that shares the artifact store (a lock file there:
:func:`superduper_transformers.store.artifacts.model_lock`): each reads the pointers,
decides and writes with no other one in between, so no alias is written to a checkpoint
a prune just deleted and no history entry of a concurrent promotion is lost. After
writing, a promotion checks again that its checkpoint still exists (a process that does
not take the lock, such as an older version, could have deleted it) and undoes the move
if not.
"""

from __future__ import annotations

import getpass
import re
import time
import typing as t

from superduper import Component, logging

from superduper_transformers import checkpoint as ckpts
from superduper_transformers.store import artifacts, sql_components

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

IN_USE = "in_use"
PROMOTE, ROLLBACK, DELETE, REJECT = "promote", "rollback", "delete", "reject"
APPLY, TRAIN = "apply", "train"
#: Attributes set on an ``LLM`` object (this object only, never stored).
_RECORDED_BY_CALLER = "_sdt_pointer_recorded"  # its save moves the pointer; the caller records it
_CLEARS_POINTER = "_sdt_clears_pointer"  # its adapter_id=None is meant: the save clears the pointer
_ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


class PromotionError(ValueError):
    """An unknown model, checkpoint or alias, a checkpoint of another model, or nothing to roll back."""


class Promotions(Component):
    """The aliases of a model's checkpoints and the history of what it used when.

    :param model: Identifier of the ``LLM`` (also this row's identifier).
    :param aliases: ``{alias: checkpoint identifier}``.
    :param history: One entry per promotion, rollback or alias removed by a forced
        delete, oldest first: ``pointer`` (``"in_use"`` or the alias), ``action``, ``from``
        and ``to`` (checkpoint identifiers; ``from`` may be None, ``to`` is None for a
        delete), ``by`` (who), ``time`` (Unix time).
    """

    model: str = ""
    aliases: t.Dict = None  # type: ignore[assignment]
    history: t.List = None  # type: ignore[assignment]

    def postinit(self):
        """Fill defaults that dataclasses cannot hold as mutable defaults."""
        self.aliases = dict(self.aliases or {})
        self.history = list(self.history or [])
        super().postinit()

    def rollback_target(self, pointer: str = IN_USE) -> t.Optional[str]:
        """The checkpoint ``pointer`` pointed at before its last promotion not yet rolled back.

        Promotions stack; each rollback undoes the latest one left.
        """
        stack: t.List[t.Optional[str]] = []
        for entry in self.history:
            if entry.get("pointer") != pointer:
                continue
            if entry.get("action") == PROMOTE:
                stack.append(entry.get("from"))
            elif entry.get("action") == ROLLBACK and stack:
                stack.pop()
        return stack[-1] if stack else None

    def pinned(self) -> t.Optional[str]:
        """The checkpoint the latest promotion or rollback pointed the model at."""
        moves = [
            e for e in self.history if e.get("pointer") == IN_USE and e.get("action") in (PROMOTE, ROLLBACK)
        ]
        return moves[-1].get("to") if moves else None


def promotions(db: Datalayer, model: str) -> Promotions:
    """The ``Promotions`` row of ``model`` (an empty one, not stored, when it has none).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    """
    from superduper.base import exceptions

    try:
        if model in db.show("Promotions"):
            return db.load("Promotions", model)
    except exceptions.NotFound:
        pass
    return Promotions(model, model=model)


def _stored_promotions(db: Datalayer, model: str) -> t.Optional[Promotions]:
    """The ``Promotions`` of ``model`` read from its row's columns, for reading only (not
    stored: it is not the stored component). A prune asks at every save, and superduper's
    load of the row costs ~0.1 s. None on another backend, or a row this cannot read."""
    import json

    from superduper_transformers.store import sql_writes

    rows = sql_writes.select_rows(db, "Promotions", ["aliases", "history", "version"], {"identifier": model})
    if rows is None:
        return None
    if not rows:
        return Promotions(model, model=model)
    row = max(rows, key=lambda r: r["version"] or 0)
    try:
        aliases, history = json.loads(row["aliases"] or "{}"), json.loads(row["history"] or "[]")
    except (TypeError, ValueError):
        return None
    if not isinstance(aliases, dict) or not isinstance(history, list):
        return None
    return Promotions(model, model=model, aliases=aliases, history=history)


def protected_checkpoints(db: Datalayer, model: str) -> t.Set[str]:
    """Checkpoints of ``model`` that pruning must keep: alias targets, the checkpoint a
    promotion or rollback pointed the model at, and each pointer's rollback target.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    """
    record = _stored_promotions(db, model) or promotions(db, model)
    out = set(record.aliases.values())
    out.add(record.pinned())
    for pointer in {IN_USE, *record.aliases}:
        out.add(record.rollback_target(pointer))
    out.discard(None)
    return out


def check_model(db: Datalayer, model: str) -> None:
    """Raise :class:`PromotionError` naming the models there are when ``model`` is not one."""
    models = db.show("LLM")
    if model not in models:
        raise PromotionError(
            f"Model `{model}` is not in the database (models: {sorted(models)}). Check the name "
            "(`superduper-transformers models` lists them)."
        )


def find_checkpoint(db: Datalayer, model: str, checkpoint: t.Union[str, int]) -> str:
    """The identifier of ``model``'s checkpoint named by ``checkpoint``.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param checkpoint: A checkpoint identifier, an alias of the model, or a step (when
        exactly one of the model's checkpoints has it).
    :raises PromotionError: unknown, ambiguous, or a checkpoint of another model.
    """
    check_model(db, model)
    rows = ckpts.list_checkpoints(db, model)
    mine = {r["identifier"] for r in rows}
    name = str(checkpoint)
    if name in mine:
        return name
    aliases = promotions(db, model).aliases
    if name in aliases:
        return aliases[name]
    if name.isdigit():
        at_step = [r["identifier"] for r in rows if r["step"] == int(name)]
        if len(at_step) == 1:
            return at_step[0]
        if len(at_step) > 1:
            raise PromotionError(
                f"Model `{model}` has {len(at_step)} checkpoints at step {name} (several runs): "
                f"{at_step}. Name one by its identifier."
            )
    table = db["Checkpoint"]
    owner = table.filter(table["identifier"] == name).select("model").execute()
    if owner:
        raise PromotionError(
            f"Checkpoint `{name}` belongs to model `{owner[0]['model']}`, not `{model}`: a model "
            f"can only use its own checkpoints. Checkpoints of `{model}`: {sorted(mine)}."
        )
    raise PromotionError(
        f"`{name}` is neither a checkpoint, an alias nor a step of model `{model}`. Its "
        f"checkpoints: {sorted(mine) or 'none'}; its aliases: {sorted(aliases) or 'none'} "
        "(`superduper-transformers checkpoints --model NAME` lists them)."
    )


def resolve_alias(db: Datalayer, model: str, alias: str) -> ckpts.Checkpoint:
    """The checkpoint ``alias`` of ``model`` points at, its files verified.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param alias: e.g. ``"prod"``.
    :raises PromotionError: when the model has no such alias.
    """
    check_model(db, model)
    aliases = promotions(db, model).aliases
    if alias not in aliases:
        raise PromotionError(
            f"Model `{model}` has no alias `{alias}` (its aliases: {sorted(aliases) or 'none'}). "
            f"Set one with `set_alias(db, {model!r}, {alias!r}, CHECKPOINT)`."
        )
    return ckpts.load_checkpoint(db, aliases[alias])


def load_model(db: Datalayer, model: str, alias: t.Optional[str] = None):
    """Load the ``LLM`` ``model``, using the checkpoint of ``alias`` when given (in memory:
    the stored model keeps its own pointer).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param alias: An alias of the model (``"prod"``), or None for the checkpoint in use.
    """
    check_model(db, model)
    llm = db.load("LLM", model)
    if alias is not None:
        llm.adapter_id = resolve_alias(db, model, alias)
        llm._pipeline = None
    return llm


def promote(
    db: Datalayer,
    model: str,
    checkpoint: t.Union[str, int],
    alias: t.Optional[str] = None,
    by: t.Optional[str] = None,
    note: t.Optional[t.Dict[str, t.Any]] = None,
) -> t.Dict[str, t.Any]:
    """Point ``model`` (or its ``alias``) at another of its stored checkpoints, and record it.

    The checkpoint's files are verified against its manifest first; nothing is written
    when they do not verify.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param checkpoint: Identifier, alias or step of one of the model's checkpoints.
    :param alias: Move this alias instead of the in-use pointer (e.g. ``"prod"``).
    :param by: Who promotes (default: the login name of this process).
    :param note: More fields of the history entry (a gate's scores).
    :return: the history entry written.
    :raises PromotionError: unknown model/checkpoint/alias name, a checkpoint of another model.
    :raises CheckpointError: the checkpoint's files are missing or altered.
    """
    if alias is not None and not _ALIAS_NAME.fullmatch(alias):
        raise PromotionError(
            f"`alias`={alias!r} is not a valid alias name: use a letter, then up to 63 letters, "
            "digits, `_`, `-` or `.` (e.g. `prod`, `candidate`)."
        )
    with artifacts.model_lock(db, model):
        target = ckpts.load_checkpoint(db, find_checkpoint(db, model, checkpoint))
        return _move(db, model, target, alias or IN_USE, PROMOTE, by, note)


def record_rejection(
    db: Datalayer, model: str, candidate: str, alias: str, by: t.Optional[str] = None, note=None
) -> t.Dict[str, t.Any]:
    """Record that ``candidate`` was refused for ``alias``, which stays where it is.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param candidate: The refused checkpoint's identifier.
    :param alias: The alias it would have moved.
    :param by: Who refused it.
    :param note: More fields of the history entry (the scores).
    :return: the history entry written.
    """
    with artifacts.model_lock(db, model):
        record = promotions(db, model)
        kept = record.aliases.get(alias)
        entry = {"pointer": alias, "action": REJECT, "from": kept, "to": kept, "candidate": candidate}
        record.history.append({**entry, "by": by or _user(), "time": time.time(), **(note or {})})
        db.apply(record, force=True, jobs=False)
        return record.history[-1]


def rollback(db: Datalayer, model: str, alias: t.Optional[str] = None, by: t.Optional[str] = None):
    """Return ``model`` (or its ``alias``) to the checkpoint it used before its last promotion.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param alias: Roll back this alias instead of the in-use pointer.
    :param by: Who rolls back (default: the login name of this process).
    :return: the history entry written.
    :raises PromotionError: when there is no promotion to undo, or its checkpoint is gone.
    """
    check_model(db, model)
    with artifacts.model_lock(db, model):
        return _rollback(db, model, alias, by)


def _rollback(db: Datalayer, model: str, alias: t.Optional[str], by: t.Optional[str]):
    pointer = alias or IN_USE
    previous = promotions(db, model).rollback_target(pointer)
    what = "the model" if alias is None else f"alias `{alias}`"
    if previous is None:
        raise PromotionError(
            f"Nothing to roll back: {what} of `{model}` has no earlier checkpoint in its promotion "
            "history (it was never promoted, every promotion was rolled back, or it pointed at no "
            "checkpoint before). `superduper-transformers promotions MODEL` shows the history."
        )
    if not _exists(db, model, previous):
        raise PromotionError(
            f"Cannot roll back {what} of `{model}`: its previous checkpoint `{previous}` is no longer "
            "in the database (deleted). Promote another checkpoint instead."
        )
    return _move(db, model, ckpts.load_checkpoint(db, previous), pointer, ROLLBACK, by)


def _exists(db: Datalayer, model: str, identifier: str) -> bool:
    return identifier in {r["identifier"] for r in ckpts.list_checkpoints(db, model)}


def _move(db: Datalayer, model: str, target: ckpts.Checkpoint, pointer: str, action: str, by, note=None):
    """Point ``pointer`` at ``target`` and record it; the caller holds the model's lock."""
    record = promotions(db, model)
    llm = db.load("LLM", model) if pointer == IN_USE else None
    if llm is not None:
        before = getattr(llm.adapter_id, "identifier", None)
        llm.adapter_id = target
        setattr(llm, _RECORDED_BY_CALLER, True)
        llm.save()
    else:
        before = record.aliases.get(pointer)
        record.aliases[pointer] = target.identifier
    entry = {
        "pointer": pointer,
        "action": action,
        "from": before,
        "to": target.identifier,
        "by": by or _user(),
        "time": time.time(),
        **(note or {}),
    }
    record.history.append(entry)
    db.apply(record, force=True, jobs=False)
    if not _exists(db, model, target.identifier):  # deleted meanwhile by a process without the lock
        _undo(db, model, record, llm, pointer, before)
        raise PromotionError(
            f"Checkpoint `{target.identifier}` of model `{model}` was deleted while {pointer} was being "
            f"pointed at it (by a process that does not take the model's lock: an older version, or "
            f"`db.teardown`); the {action} was undone. Promote another checkpoint "
            f"(`superduper-transformers checkpoints --model {model}` lists them)."
        )
    logging.info(f"{model}: {pointer} {action}d from {before} to {target.identifier}")
    return entry


def _undo(db: Datalayer, model: str, record: Promotions, llm, pointer: str, before: t.Optional[str]):
    record.history.pop()
    if llm is not None:
        if before and _exists(db, model, before):
            llm.adapter_id = ckpts.load_checkpoint(db, before)
        else:
            clear_pointer(llm)
        llm.save()
    elif before is None:
        del record.aliases[pointer]
    else:
        record.aliases[pointer] = before
    db.apply(record, force=True, jobs=False)


def record_move(
    db: Datalayer,
    model: str,
    before: t.Optional[str],
    after: t.Optional[str],
    action: str,
    by: t.Optional[str] = None,
    **extra: t.Any,
) -> t.Dict[str, t.Any]:
    """Append a move of ``model``'s in-use pointer made outside :func:`promote` (an apply, a
    training's first checkpoint) to its history, under the model's lock.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param before: The checkpoint it pointed at (None: none).
    :param after: The checkpoint it points at now.
    :param action: :data:`APPLY` or :data:`TRAIN`.
    :param by: Who (default: the login name of this process).
    :param extra: More keys of the entry (``run``).
    :return: the history entry written.
    """
    entry = {"pointer": IN_USE, "action": action, "from": before, "to": after, "by": by or _user()}
    entry.update(time=time.time(), **extra)
    with artifacts.model_lock(db, model):
        record = promotions(db, model)
        record.history.append(entry)
        sql_components.apply_new(db, record)  # the model's first: one INSERT on SQLite
    return entry


def recorded_by_caller(llm: t.Any) -> bool:
    """Whether the save of ``llm`` (this object) moves its pointer for a caller that records the
    move itself (:func:`promote`, :func:`rollback`)."""
    return bool(getattr(llm, _RECORDED_BY_CALLER, False))


def clear_pointer(llm: t.Any) -> t.Any:
    """Set ``llm.adapter_id`` to None and mark this object so that its next save writes it
    (an apply of an ``LLM`` without ``adapter_id`` otherwise keeps the stored pointer).
    Returns ``llm``."""
    llm.adapter_id = None
    setattr(llm, _CLEARS_POINTER, True)
    return llm


def clears_pointer(llm: t.Any) -> bool:
    """Whether ``llm`` (this object) was marked by :func:`clear_pointer`."""
    return bool(getattr(llm, _CLEARS_POINTER, False))


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container user without a passwd entry)
        return "unknown"


def delete_checkpoint(
    db: Datalayer,
    model: str,
    checkpoint: t.Union[str, int],
    force: bool = False,
    by: t.Optional[str] = None,
) -> t.Dict[str, t.Any]:
    """Delete one of ``model``'s stored checkpoints (its row and files), unless something
    still points at it.

    Refused, with nothing written, when the checkpoint is the one the model uses (even
    with ``force``: the model would point at nothing), or, without ``force``, when an
    alias points at it, the latest promotion or rollback pinned the model to it, or a
    :func:`rollback` would return to it. ``force=True`` deletes it anyway and removes
    the aliases that point at it (recorded in the history as ``delete``), so none dangles.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param checkpoint: Identifier, alias or step of one of the model's checkpoints.
    :param force: Delete a protected checkpoint (not the one in use) and drop its aliases.
    :param by: Who deletes (default: the login name of this process), for the history.
    :return: ``{"checkpoint": identifier, "aliases_removed": [alias, ...]}``.
    :raises PromotionError: unknown model or checkpoint, the checkpoint in use, or a
        protected checkpoint without ``force``.
    """
    with artifacts.model_lock(db, model):
        return _delete_checkpoint(db, model, checkpoint, force, by)


def _delete_checkpoint(db: Datalayer, model: str, checkpoint: t.Union[str, int], force: bool, by) -> t.Dict:
    identifier = find_checkpoint(db, model, checkpoint)
    in_use = stored_pointer(db, model)
    if identifier == in_use:
        raise PromotionError(
            f"Cannot delete checkpoint `{identifier}`: model `{model}` uses it (its in-use "
            "pointer), so the model would point at nothing; `force` does not override this. "
            f"Promote another checkpoint first (`superduper-transformers promote {model} "
            f"CHECKPOINT`, or `promote(db, {model!r}, CHECKPOINT)`), then delete this one."
        )
    record = promotions(db, model)
    aliases = sorted(a for a, target in record.aliases.items() if target == identifier)
    reasons = [f"alias `{a}` points at it" for a in aliases]
    if record.pinned() == identifier:
        reasons.append("the model's latest promotion or rollback pointed it at this checkpoint")
    for pointer in sorted({IN_USE, *record.aliases}):
        if record.rollback_target(pointer) == identifier:
            what = "the model" if pointer == IN_USE else f"alias `{pointer}`"
            reasons.append(f"`rollback` of {what} would return to it")
    if reasons and not force:
        fix = (
            f"Move {'the alias' if len(aliases) == 1 else 'the aliases'} to another checkpoint "
            f"first (`superduper-transformers promote {model} CHECKPOINT --alias {aliases[0]}`, or "
            f"`promote(db, {model!r}, CHECKPOINT, alias={aliases[0]!r})`), or delete it anyway "
            "with `--force` / `force=True`, which removes "
            f"{'the alias' if len(aliases) == 1 else 'the aliases'} too."
            if aliases
            else "Delete it anyway with `--force` / `force=True` (a later `rollback` then cannot "
            "return to it)."
        )
        raise PromotionError(
            f"Checkpoint `{identifier}` of model `{model}` is protected: {'; '.join(reasons)}. {fix}"
        )
    if aliases:  # before the files go: an interrupted delete leaves no alias pointing at nothing
        who, now = by or _user(), time.time()
        for alias in aliases:
            del record.aliases[alias]
            record.history.append(
                {"pointer": alias, "action": DELETE, "from": identifier, "to": None, "by": who, "time": now}
            )
        db.apply(record, force=True, jobs=False)
    ckpts.remove_checkpoint(db, identifier)
    logging.info(
        f"{model}: deleted checkpoint {identifier}" + (f" and its aliases {aliases}" if aliases else "")
    )
    return {"checkpoint": identifier, "aliases_removed": aliases}


def forget(db: Datalayer, model: str) -> bool:
    """Remove the ``Promotions`` row of ``model`` (when the model itself is deleted).

    :return: whether there was one.
    """
    with artifacts.model_lock(db, model):
        if model not in db.show("Promotions"):
            return False
        db.teardown("Promotions", model, force=True)
        return True


#: How superduper stores a reference to a component in its parent's row.
_REFERENCE = "&:component:"


def point_at(db: Datalayer, llm: t.Any, ckpt: ckpts.Checkpoint) -> None:
    """Point ``llm`` and its stored row at ``ckpt`` (the in-use pointer), in one write.

    One column of one row (:func:`..store.sql_writes.update_column`): ``llm.save()`` would
    load, hash and re-serialize the model and its children, about 235 SQL statements on
    SQLite. On other backends, or when the row is not where ``llm`` says, ``llm.save()``.

    :param db: The datalayer.
    :param llm: The ``LLM`` (as stored: its ``uuid`` names its row).
    :param ckpt: A registered checkpoint.
    """
    from superduper_transformers.store import sql_writes

    llm.adapter_id = ckpt
    reference = f"{_REFERENCE}{ckpt.huuid}"  # what superduper's apply writes for a child
    if sql_writes.update_column(db, llm.component, "adapter_id", reference, {"uuid": llm.uuid}) != 1:
        llm.save()


def stored_pointer(db: Datalayer, model: str) -> t.Optional[str]:
    """The checkpoint the stored row of ``model`` points at (read from the row: its files
    are not touched).

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    """
    from superduper.base import exceptions

    from superduper_transformers.store import sql_writes

    rows = sql_writes.select_rows(db, "LLM", ["adapter_id", "version"], {"identifier": model})
    if rows:  # the latest version's column, without loading the model and its children
        reference = max(rows, key=lambda r: r["version"] or 0)["adapter_id"] or ""
        prefix = f"{_REFERENCE}Checkpoint:"
        if reference.startswith(prefix):
            return reference[len(prefix) :].rsplit(":", 1)[0]
        if not reference:
            return None
    elif rows is not None:  # SQLite, and no row of the model: nothing to load either
        return None
    try:
        return getattr(db.load("LLM", model).adapter_id, "identifier", None)
    except exceptions.NotFound:
        return None


def prune(
    db: Datalayer,
    model: str,
    experiment_id: str,
    limit: t.Optional[int],
    metric: t.Optional[str],
    greater_is_better: bool,
    in_use: t.Optional[str] = None,
) -> t.List[str]:
    """Delete the run's checkpoints beyond ``limit`` (``save_total_limit``), under the model's lock.

    Never deletes a protected checkpoint (:func:`protected_checkpoints`; they do not count
    toward the limit), the best by ``metric``, ``in_use`` (the checkpoint the training
    process points the model at) nor the one the stored model row points at.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run whose checkpoints are pruned.
    :param limit: How many to keep (None keeps all).
    :param metric: ``metric_for_best_model`` as logged (``eval_...``), or None.
    :param greater_is_better: Direction of ``metric``.
    :param in_use: The checkpoint the caller points the model at.
    :return: the identifiers deleted.
    """
    if limit is None:
        return []
    with artifacts.model_lock(db, model):
        pinned = protected_checkpoints(db, model)
        rows = [r for r in ckpts.list_checkpoints(db, model, experiment_id) if r["identifier"] not in pinned]
        keep = {in_use, stored_pointer(db, model)} - {None}
        doomed = ckpts.checkpoints_to_prune(rows, limit, metric, greater_is_better, protected=keep)
        for r in doomed:
            ckpts.remove_checkpoint(db, r["identifier"])
    return [r["identifier"] for r in doomed]
