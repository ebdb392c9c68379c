"""The ``Checkpoint`` component: a training checkpoint folder stored in the datalayer.

A checkpoint's files are copied into the datalayer's artifact store before its row
is written (atomically: see :mod:`superduper_transformers.store.artifacts`); the row records
the run (``model``, ``experiment_id``), the global ``step``, the metrics at that step
and a manifest (name, size, sha256 of every file, computed from the trained files)
used to verify the stored copy before anything is loaded from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
import typing as t

from superduper import Component, logging
from superduper.misc import typing as st

from superduper_transformers import _faults
from superduper_transformers.settings import best_metric
from superduper_transformers.store.artifacts import CheckpointError  # re-exported: the public name

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

_CHUNK = 1 << 20
#: Plain columns of a checkpoint row: listing them never touches the artifact store.
_ROW_COLUMNS = ("identifier", "step", "model", "experiment_id", "metrics", "manifest", "artifact_id")
#: Those of them stored as JSON text.
_JSON_COLUMNS = ("metrics", "manifest")


class Checkpoint(Component):
    """A training checkpoint (adapter or full weights, trainer state) stored as an artifact.

    :param path: The checkpoint directory; copied into the artifact store on apply.
        After loading (``setup()``), the local directory inside the artifact store.
    :param step: The global training step at which it was saved.
    :param model: Identifier of the ``LLM`` that was trained.
    :param experiment_id: Identifier of the training run that saved it.
    :param metrics: The latest train/eval metrics at ``step``.
    :param manifest: ``{relative file name: [size, sha256]}`` of the saved files.
    :param artifact_id: Folder of the files in the artifact store (set by
        :func:`register_checkpoint`; lets clean-up find orphaned folders without reading files).
    :param data_fingerprint: The data the run trained on up to this checkpoint: query, row
        counts, content hashes and tokenization settings (see
        :func:`superduper_transformers.lineage.data_fingerprint`); empty for rows written
        before fingerprints existed.
    """

    path: st.File
    step: int = 0
    model: str = ""
    experiment_id: str = ""
    metrics: t.Dict = None  # type: ignore[assignment]
    manifest: t.Dict = None  # type: ignore[assignment]
    artifact_id: str = ""
    data_fingerprint: t.Dict = None  # type: ignore[assignment]

    def postinit(self):
        """Fill defaults that dataclasses cannot hold as mutable defaults."""
        self.metrics = dict(self.metrics or {})
        self.manifest = dict(self.manifest or {})
        self.data_fingerprint = dict(self.data_fingerprint or {})
        super().postinit()

    def setup(self):
        """Resolve the files, keeping the id they are stored under.

        superduper's ``setup`` turns a ``File`` field into a plain path; a plain path is
        hashed anew on the next apply (e.g. when the model pointing at this checkpoint is
        saved), which copies the folder again under another id. Keeping the stored id
        makes that apply a no-op.
        """
        from superduper.base.datatype import FileItem

        super().setup()
        if self.artifact_id and isinstance(self.path, str):
            self.path = FileItem(identifier=self.artifact_id, path=self.path, db=self.db)
        return self

    @property
    def local_path(self) -> str:
        """The checkpoint's directory on this machine, verified against the manifest."""
        path = getattr(self.path, "path", self.path)
        if not path:
            self.setup()
            path = getattr(self.path, "path", self.path)
        verify_directory(str(path), self.manifest, self.identifier)
        return str(path)

    @contextlib.contextmanager
    def verified_copy(self) -> t.Iterator[str]:
        """A private copy of the checkpoint's folder, verified against the manifest, for
        the ``with`` block; removed afterwards. Load from it: what was checked is what is loaded.

        Verifying the folder in the store and then loading from it leaves a gap: superduper
        makes the folder above it writable by all (0o777), so another local user can swap
        the verified folder for another between the two steps. The copy lies in a fresh
        folder of the temporary directory (``TMPDIR``) that only this user can enter
        (``mkdtemp``: 0o700, under a sticky parent), and it is the copy that is verified.
        A full fine-tune needs its size free there while it loads.

        :raises CheckpointError: naming the checkpoint and the missing, altered, extra or
            special file (a link, a pipe).
        """
        path = str(getattr(self.path, "path", self.path) or "")
        if not path:
            self.setup()
            path = str(getattr(self.path, "path", self.path))
        if not os.path.isdir(path):
            verify_directory(path, self.manifest, self.identifier)  # raises: names the folder
        private = tempfile.mkdtemp(prefix="superduper-transformers-load-")
        try:
            copy = os.path.join(private, os.path.basename(os.path.normpath(path)))
            shutil.copytree(path, copy, symlinks=True, copy_function=self._copy_regular_file)
            verify_directory(copy, self.manifest, self.identifier)
            yield copy
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _copy_regular_file(self, src: str, dst: str) -> None:
        if not stat.S_ISREG(os.lstat(src).st_mode):  # a pipe would block the copy forever
            raise CheckpointError(
                f"Checkpoint `{self.identifier}`: `{os.path.basename(src)}` in the stored folder is "
                "not a regular file. The stored copy was altered: delete the checkpoint "
                "(`superduper-transformers delete-checkpoint MODEL CHECKPOINT`) and use another."
            )
        shutil.copyfile(src, dst, follow_symlinks=False)


def file_manifest(directory: str, identifier: t.Optional[str] = None) -> t.Dict[str, t.List]:
    """``{relative name: [size, sha256]}`` for every file under ``directory``.

    :param directory: The checkpoint folder.
    :param identifier: The checkpoint's identifier, for error messages.
    :raises CheckpointError: when the folder holds a symlink (it is not followed).
    """
    from superduper_transformers.store.artifacts import refuse_links

    refuse_links(directory, _label(directory, identifier))
    out: t.Dict[str, t.List] = {}
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(_CHUNK), b""):
                    digest.update(chunk)
            rel = os.path.relpath(full, directory)
            out[rel] = [os.path.getsize(full), digest.hexdigest()]
    return dict(sorted(out.items()))


def _label(directory: str, identifier: t.Optional[str]) -> str:
    return f"Checkpoint `{identifier}`" if identifier else f"Checkpoint folder {directory}"


def check_manifest_entries(manifest: t.Dict[str, t.List], identifier: str) -> None:
    """Refuse manifest entries that could name a file outside the checkpoint folder.

    An entry must be a relative path in normal form (as :func:`file_manifest` writes it):
    no absolute path, no ``..``, no ``.`` or empty parts. Otherwise a tampered row could make
    verification read (and report the size of) any file on the machine.

    :param manifest: ``{relative file name: [size, sha256]}`` as stored in the row.
    :param identifier: The checkpoint's identifier, for error messages.
    :raises CheckpointError: naming the checkpoint and the entry.
    """
    for rel, value in manifest.items():
        parts = str(rel).replace("\\", "/").split("/")
        if (
            not isinstance(rel, str)
            or os.path.isabs(rel)
            or any(p in ("", ".", "..") for p in parts)
            or "\x00" in rel
        ):
            raise CheckpointError(
                f"Checkpoint `{identifier}`: its manifest names {rel!r}, which is not a plain "
                "relative file name inside the checkpoint folder (absolute, `..` or `.` parts). "
                "The row was altered: delete the checkpoint (`superduper-transformers "
                "delete-checkpoint MODEL CHECKPOINT`) and use another."
            )
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            raise CheckpointError(
                f"Checkpoint `{identifier}`: its manifest entry {rel!r} is {value!r}, not "
                "[size, sha256]. The row was altered: delete the checkpoint and use another."
            )


def verify_directory(directory: str, manifest: t.Dict[str, t.List], identifier: str) -> None:
    """Check that ``directory`` holds exactly the manifest's files with their sizes and hashes.

    :param directory: The checkpoint folder.
    :param manifest: ``{relative file name: [size, sha256]}`` from the checkpoint's row.
    :param identifier: The checkpoint's identifier, for error messages.
    :raises CheckpointError: naming the checkpoint and the first bad file or manifest entry.
    """
    from superduper_transformers.store.artifacts import refuse_links

    if not os.path.isdir(directory):
        raise CheckpointError(
            f"Checkpoint `{identifier}`: its files are missing from the artifact store "
            f"(expected the folder {directory}). The artifact store must be the one the "
            "checkpoint was written to (check CFG.artifact_store / SUPERDUPER_ARTIFACT_STORE)."
        )
    check_manifest_entries(manifest or {}, identifier)
    # Before any entry is opened: a link would lead the checks below outside the folder.
    refuse_links(directory, f"Checkpoint `{identifier}`")
    if not manifest:
        # A checkpoint always holds files: an empty manifest cannot vouch for them.
        actual = file_manifest(directory, identifier)
        if actual:
            raise CheckpointError(
                f"Checkpoint `{identifier}`: its manifest is empty but {directory} holds "
                f"{len(actual)} file(s) (e.g. `{next(iter(actual))}`): they cannot be verified. "
                "Register the folder again (`register_checkpoint`) to record its manifest."
            )
        return
    # Cheap checks first: a missing or truncated file is found without hashing anything.
    for rel, (size, _sha) in manifest.items():
        full = os.path.join(directory, rel)
        if not os.path.isfile(full):
            raise CheckpointError(f"Checkpoint `{identifier}`: file `{rel}` is missing from {directory}.")
        if os.path.getsize(full) != size:
            raise CheckpointError(
                f"Checkpoint `{identifier}`: file `{rel}` has {os.path.getsize(full)} bytes, "
                f"the manifest says {size}: the stored copy is altered or truncated."
            )
    actual = file_manifest(directory, identifier)
    for rel, (_size, sha) in manifest.items():
        if rel not in actual:  # e.g. a name the folder does not list as it is written
            raise CheckpointError(
                f"Checkpoint `{identifier}`: manifest entry `{rel}` matches no file listed "
                f"in {directory}. The row or the folder was altered: delete the checkpoint "
                "(`superduper-transformers delete-checkpoint MODEL CHECKPOINT`) and use another."
            )
        if actual[rel][1] != sha:
            raise CheckpointError(
                f"Checkpoint `{identifier}`: file `{rel}` does not match its sha256 in the "
                "manifest: the stored copy is altered."
            )
    extra = sorted(set(actual) - set(manifest))
    if extra:  # e.g. weights of another kind that a loader would pick up instead
        raise CheckpointError(
            f"Checkpoint `{identifier}`: file `{extra[0]}` in {directory} is not in the "
            "manifest: the stored copy was altered."
        )


def checkpoint_identifier(model: str, experiment_id: str, step: int) -> str:
    """The identifier of the checkpoint saved by run ``experiment_id`` at ``step``."""
    return f"{model}-{experiment_id}-step{step}"


def register_checkpoint(
    db: Datalayer,
    *,
    model: str,
    experiment_id: str,
    path: str,
    step: int,
    metrics: t.Optional[t.Dict] = None,
    data_fingerprint: t.Optional[t.Dict] = None,
) -> Checkpoint:
    """Copy a checkpoint folder into the artifact store and record it in the db.

    The row becomes visible only after every file is in the store and matches the
    manifest of the source folder (see :mod:`superduper_transformers.store.artifacts`).
    Registering a step that is already registered (and intact) is a no-op.

    :param db: The datalayer.
    :param model: Identifier of the trained ``LLM``.
    :param experiment_id: Identifier of the training run.
    :param path: The local checkpoint folder written by the HF trainer.
    :param step: Global step of the checkpoint.
    :param metrics: Metrics at ``step``.
    :param data_fingerprint: The fingerprint of the run's training data (lineage).
    """
    from superduper.base.datatype import FileItem

    from superduper_transformers.store import artifacts, sql_components

    identifier = checkpoint_identifier(model, experiment_id, step)
    existing = _intact_checkpoint(db, identifier)
    if existing is not None:
        return existing
    manifest = file_manifest(path, identifier)  # of the trained files, before anything is copied
    artifact_id = artifacts.new_artifact_id(db, model)
    stored = artifacts.store_directory(
        db,
        os.path.abspath(path),
        artifact_id,
        verify=lambda copy: verify_directory(copy, manifest, identifier),
        step=step,
    )
    ckpt = Checkpoint(
        identifier,
        # Already in the store under its final id: superduper finds it and copies nothing.
        path=FileItem(identifier=artifact_id, path=stored),
        step=int(step),
        model=model,
        experiment_id=experiment_id,
        metrics={k: v for k, v in (metrics or {}).items() if _is_number(v)},
        manifest=manifest,
        artifact_id=artifact_id,
        data_fingerprint=dict(data_fingerprint or {}),
    )
    # A new row: one INSERT on SQLite (as superduper's apply writes it), else superduper's apply.
    sql_components.apply_new(db, ckpt)
    # superduper's apply makes the (already present) folder 0o777 again.
    artifacts.restrict_permissions(os.path.dirname(stored))
    _faults.crash_point("registered", step)
    logging.info(f"Registered checkpoint {ckpt.identifier} (step {step})")
    return ckpt


def _intact_checkpoint(db: Datalayer, identifier: str) -> t.Optional[Checkpoint]:
    """The registered checkpoint ``identifier`` if its stored files verify, else None."""
    from superduper.base import exceptions

    from superduper_transformers.store import sql_writes

    try:
        # Asked at every save: one SELECT on SQLite, superduper's query elsewhere.
        found = sql_writes.select_rows(db, "Checkpoint", ["identifier"], {"identifier": identifier})
        if found is None:
            table = db["Checkpoint"]
            found = table.filter(table["identifier"] == identifier).select("identifier").execute()
        if not found:
            return None
        return load_checkpoint(db, identifier)
    except (exceptions.NotFound, CheckpointError):
        return None


def load_checkpoint(db: Datalayer, identifier: str, verify: bool = True) -> Checkpoint:
    """Load a registered checkpoint and verify its stored files against the manifest.

    :param db: The datalayer.
    :param identifier: The checkpoint's identifier.
    :param verify: Verify the files in the store (False: the caller verifies what it
        reads, e.g. :meth:`Checkpoint.verified_copy`).
    :raises CheckpointError: naming the checkpoint and the missing or altered file.
    """
    try:
        ckpt = db.load("Checkpoint", identifier)
    except (FileNotFoundError, AssertionError) as e:
        # superduper resolves the folder while decoding the row
        raise CheckpointError(
            f"Checkpoint `{identifier}`: its folder in the artifact store is missing or "
            f"holds something else ({e}). The artifact store must be the one the checkpoint "
            "was written to (check CFG.artifact_store / SUPERDUPER_ARTIFACT_STORE)."
        ) from e
    if verify:
        _ = ckpt.local_path  # the property verifies the files against the manifest
    return ckpt


def checkpoint_without_files(db: Datalayer, identifier: str) -> Checkpoint:
    """The registered checkpoint ``identifier`` built from its row, its folder not resolved.

    For when the folder is gone from the artifact store: the component can still be
    compared (hashed) and deleted, but :attr:`Checkpoint.local_path` raises.

    :param db: The datalayer.
    :param identifier: The checkpoint's identifier.
    """
    from superduper.base.datatype import FileItem

    from superduper_transformers.store import artifacts

    table = db["Checkpoint"]
    rows = table.filter(table["identifier"] == identifier).select(*_ROW_COLUMNS, "version").execute()
    if not rows:
        raise CheckpointError(f"Checkpoint `{identifier}` is not registered in this database.")
    row = max(rows, key=lambda r: r.get("version") or 0)
    folder = os.path.join(artifacts.store_root(db), row["artifact_id"] or identifier)
    ckpt = Checkpoint(
        identifier,
        path=FileItem(identifier=row["artifact_id"], path=folder),
        **{k: row[k] for k in ("step", "model", "experiment_id", "metrics", "manifest", "artifact_id")},
        db=db,
    )
    ckpt.version = row.get("version")
    return ckpt


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def list_checkpoints(db: Datalayer, model: str, experiment_id: t.Optional[str] = None) -> t.List[t.Dict]:
    """Rows of the checkpoints of ``model`` (of one run if ``experiment_id``), by step.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: Restrict to this run.
    """
    from superduper.base import exceptions

    from superduper_transformers.store import sql_writes

    match = {"model": model} if experiment_id is None else {"model": model, "experiment_id": experiment_id}
    # A prune asks at every save: one SELECT on SQLite (JSON columns decoded as superduper
    # decodes them), superduper's query elsewhere.
    stored = sql_writes.select_rows(db, "Checkpoint", _ROW_COLUMNS, match)
    if stored is not None:
        rows = [
            {k: json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) else v for k, v in r.items()}
            for r in stored
        ]
        return sorted(rows, key=lambda r: (r["step"], r["identifier"]))
    table = db["Checkpoint"]
    query = table.filter(*(table[k] == v for k, v in match.items()))
    try:
        rows = [dict(r) for r in query.select(*_ROW_COLUMNS).execute()]
    except exceptions.NotFound:  # no checkpoint was ever registered in this db
        return []
    return sorted(rows, key=lambda r: (r["step"], r["identifier"]))


def best_checkpoint(
    rows: t.Sequence[t.Dict], metric: t.Optional[str], greater_is_better: bool
) -> t.Optional[t.Dict]:
    """The row with the best ``metric`` (latest wins ties); None when no row has it."""
    if not metric:
        return None
    scored = [r for r in rows if _is_number((r.get("metrics") or {}).get(metric))]
    if not scored:
        return None
    sign = 1 if greater_is_better else -1
    return max(scored, key=lambda r: (sign * r["metrics"][metric], r["step"]))


def checkpoints_to_prune(
    rows: t.Sequence[t.Dict],
    limit: t.Optional[int],
    metric: t.Optional[str],
    greater_is_better: bool,
    protected: t.Iterable[str] = (),
) -> t.List[t.Dict]:
    """Which checkpoints to delete so at most ``limit`` remain: never the best nor a
    protected one, then the newest.

    As transformers' own rotation: the best and the checkpoint in use are kept even
    when that makes more than ``limit`` (``save_total_limit=1`` keeps 2 while they differ).

    :param rows: The run's checkpoint rows.
    :param limit: ``save_total_limit`` (None keeps all).
    :param metric: ``metric_for_best_model`` as it appears in the metrics (``eval_...``).
    :param greater_is_better: Direction of ``metric``.
    :param protected: Identifiers never pruned (the checkpoint the model points at).
    """
    if limit is None or len(rows) <= limit:
        return []
    best = best_checkpoint(rows, metric, greater_is_better)
    kept = set(protected) & {r["identifier"] for r in rows}
    if best is not None:
        kept.add(best["identifier"])
    for r in sorted(rows, key=lambda r: r["step"], reverse=True):
        if len(kept) >= limit:
            break
        kept.add(r["identifier"])
    return [r for r in rows if r["identifier"] not in kept]


def best_metric_of(
    training_kwargs: t.Mapping[str, t.Any],
    rows: t.Sequence[t.Dict],
    eval_sets: t.Sequence[str] = (),
    default: str = "loss",
) -> t.Tuple[t.Optional[str], bool]:
    """The metric that ranks a model's checkpoints (as logged, ``eval_...``), and its direction.

    The trainer's ``metric_for_best_model`` when set; else the loss of the first eval set,
    as the training plan resolves it (``plan.eval_metric_names``): ``eval_loss`` (one ``valid`` set), else
    ``eval_valid_loss``, else ``eval_<dataset>_loss`` of the validation datasets in order.

    :param training_kwargs: The ``LLMTrainer``'s training keywords.
    :param rows: The checkpoint rows (their metric names show which eval sets ran).
    :param eval_sets: Identifiers of the model's validation datasets, in order.
    :param default: The objective's default metric (``loss``; GRPO's ``reward``, see
        ``hf.objectives``' ``eval_metrics``).
    """
    metric = training_kwargs.get("metric_for_best_model")
    if not metric:
        logged = {k for r in rows for k in (r.get("metrics") or {})}
        candidates = [f"eval_{default}", f"eval_valid_{default}", *(f"eval_{s}_{default}" for s in eval_sets)]
        metric = next((c for c in candidates if c in logged), None)
    return best_metric(metric, training_kwargs.get("greater_is_better"))


def best_of_model(db: Datalayer, model: str, experiment_id: t.Optional[str] = None) -> t.Optional[t.Dict]:
    """The row of the best checkpoint of a run of ``model`` (None without an eval metric).

    The best stays marked whichever checkpoint the model uses (the last one, unless the
    trainer set ``load_best_model_at_end=True``); promote it by pointing the model at it.

    :param db: The datalayer.
    :param model: Identifier of the ``LLM``.
    :param experiment_id: The run (default: the run of the checkpoint the model uses,
        else every checkpoint of the model).
    """
    llm = db.load("LLM", model)
    if experiment_id is None:
        experiment_id = getattr(llm.adapter_id, "experiment_id", None) or None
    rows = list_checkpoints(db, model, experiment_id)
    trainer = getattr(llm, "trainer", None)
    validation = getattr(llm, "validation", None)
    eval_sets = [d.identifier for d in validation.datasets] if validation is not None else []
    default = "reward" if getattr(trainer, "objective", None) == "grpo" else "loss"
    metric, greater = best_metric_of(
        getattr(trainer, "training_kwargs", None) or {}, rows, eval_sets, default
    )
    return best_checkpoint(rows, metric, greater)


def remove_checkpoint(db: Datalayer, identifier: str) -> None:
    """Remove a checkpoint row and its files from the artifact store.

    Low level: it checks nothing that points at the checkpoint (the model's in-use pointer,
    aliases, rollback targets). Pruning calls it on checkpoints it already knows are free;
    users delete with :func:`superduper_transformers.promote.delete_checkpoint`, which
    refuses those.

    A checkpoint whose folder is already gone from the store is removed too (with a
    warning): deleting metadata must not need the files, or one lost folder would make
    every later prune of the run fail.

    :param db: The datalayer.
    :param identifier: The checkpoint's identifier.
    """
    from superduper_transformers.store import artifacts

    if _remove_rows_natively(db, identifier):
        return
    placeholder = None
    try:
        for _ in range(2):
            try:
                db.teardown("Checkpoint", identifier, force=True)
                return
            except FileNotFoundError as e:
                # superduper decodes the row (resolving its folder) before deleting it.
                # A lost folder: put an empty stand-in there so the row can be decoded
                # and removed with superduper's own bookkeeping (relations, artifacts).
                root = artifacts.store_root(db)
                missing = os.path.abspath(str(e.filename or ""))
                if placeholder is not None or os.path.dirname(missing) != os.path.abspath(root):
                    raise
                logging.warn(
                    f"Checkpoint `{identifier}`: its folder {missing} is gone from the artifact "
                    "store; removing the row without its files."
                )
                placeholder = missing
                os.makedirs(os.path.join(placeholder, "missing"))
    finally:
        if placeholder is not None:  # superduper removes it; be sure nothing stays
            shutil.rmtree(placeholder, ignore_errors=True)


def _remove_rows_natively(db: Datalayer, identifier: str) -> bool:
    """What ``db.teardown`` does to a checkpoint, in one transaction on a SQLite db (else False).

    superduper's teardown reflects every table of the database before each of its three
    deletes (~500 SQL statements for one checkpoint). The same rows go here in one
    transaction: its ``Deployment`` rows, its row, its parent-child links and (which the
    teardown leaves behind) its artifact relations; then its artifacts that no other
    component refers to. A crash between the two leaves a folder no row references, which
    :func:`superduper_transformers.store.artifacts.cleanup_orphan_artifacts` removes.
    """
    from superduper_transformers.store import sql_writes

    relations = sql_writes.select_rows(
        db, "ArtifactRelations", ["artifact_id"], {"component": "Checkpoint", "identifier": identifier}
    )
    rows = sql_writes.select_rows(db, "Checkpoint", ["artifact_id"], {"identifier": identifier})
    if relations is None or rows is None:
        return False
    ids = {r["artifact_id"] for r in relations + rows if r["artifact_id"]}
    deleted = sql_writes.delete_rows(
        db,
        [
            ("Deployment", {"identifier": identifier}),
            ("Checkpoint", {"identifier": identifier}),
            ("ParentChildAssociations", {"parent_component": "Checkpoint", "parent_identifier": identifier}),
            ("ArtifactRelations", {"component": "Checkpoint", "identifier": identifier}),
        ],
    )
    if deleted is None:
        return False
    shared = {
        i for i in ids if sql_writes.select_rows(db, "ArtifactRelations", ["artifact_id"], {"artifact_id": i})
    }
    db.artifact_store.delete_artifact(sorted(ids - shared))
    return True
