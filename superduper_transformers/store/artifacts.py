"""Put checkpoint folders into the artifact store atomically; clean up what a crash left.

superduper copies a ``File`` field into ``<store>/<file id>/<name>`` while it plans an
apply, and writes the metadata row afterwards, so a row never points at files that were
not copied yet. But a crash in the middle of the copy leaves a half-written folder under
the final name, and a later copy to the same file id is silently skipped
(``FileExistsError`` is swallowed). So this module copies a checkpoint itself:

1. copy into ``<store>/.partial-<file id>/`` and fsync every file,
2. verify the copy against the manifest computed from the trained (source) files,
3. rename the folder to ``<store>/<file id>`` (atomic on one POSIX file system),
4. only then write the ``Checkpoint`` row (superduper finds the folder and copies nothing).

A crash before 3 leaves a ``.partial-*`` folder; a crash between 3 and 4, or in the middle
of a teardown (superduper deletes the row before the files), leaves a complete folder that
no row references. :func:`cleanup_orphan_artifacts` removes both; training calls it for
its own model before it starts. File ids carry a tag of the model (``ckpt-<tag>-...``), so
one model's clean-up never touches another model's files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import typing as t
import uuid

from superduper import logging

from superduper_transformers import _faults

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Prefix of the artifact-store folders of training checkpoints.
CHECKPOINT_PREFIX = "ckpt-"
#: Prefix of a checkpoint folder whose copy has not finished.
PARTIAL_PREFIX = ".partial-"


def model_tag(model: str) -> str:
    """``ckpt-<12 hex>``: the prefix of every checkpoint folder of ``model`` in the store.

    A hash, not the identifier itself: identifiers may hold characters a folder name cannot.
    """
    return CHECKPOINT_PREFIX + hashlib.sha256(model.encode()).hexdigest()[:12]


def new_artifact_id(model: str) -> str:
    """A fresh artifact id for a checkpoint of ``model`` (random: never reused after a crash)."""
    return f"{model_tag(model)}-{uuid.uuid4().hex}"


def store_root(db: "Datalayer") -> str:
    """The folder of the datalayer's file artifacts.

    :raises RuntimeError: when the artifact store is not a local/mounted file system.
    """
    store = db.artifact_store
    root = getattr(store, "files", None)
    if not root or not os.path.isdir(root):
        raise RuntimeError(
            f"The artifact store {type(store).__name__} has no local folder: training "
            "checkpoints need a `filesystem://` artifact store (set CFG.artifact_store)."
        )
    return root


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def store_directory(
    db: "Datalayer", source: str, artifact_id: str, verify: t.Callable[[str], None], step: int
) -> str:
    """Copy the folder ``source`` into the artifact store under ``artifact_id``, atomically.

    :param db: The datalayer.
    :param source: The checkpoint folder written by the trainer.
    :param artifact_id: The file id (from :func:`new_artifact_id`).
    :param verify: Called with the copied folder before it becomes visible; raises if bad.
    :param step: The checkpoint's step (names the crash point of fault-injection tests).
    :return: ``<store>/<artifact_id>/<basename of source>``.
    """
    root = store_root(db)
    partial = os.path.join(root, PARTIAL_PREFIX + artifact_id)
    name = os.path.basename(os.path.normpath(source))
    copied = []

    def copy(src, dst):
        shutil.copy2(src, dst)
        copied.append(dst)
        if len(copied) == 1:
            _faults.crash_point("copy", step)

    try:
        shutil.copytree(source, os.path.join(partial, name), copy_function=copy)
        for path in copied:
            _fsync(path)
        verify(os.path.join(partial, name))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    final = os.path.join(root, artifact_id)
    os.rename(partial, final)
    _fsync(root)  # make the rename itself durable
    return os.path.join(final, name)


def referenced_artifact_ids(db: "Datalayer") -> t.Set[str]:
    """Artifact ids of every ``Checkpoint`` row in the db (all models).

    Selects plain columns only: decoding the ``path`` field would fail on a row whose
    folder is gone.
    """
    from superduper.base import exceptions

    table = db["Checkpoint"]
    try:
        rows = table.select("identifier", "artifact_id").execute()
    except exceptions.NotFound:
        return set()
    return {r["artifact_id"] for r in rows if r.get("artifact_id")}


def cleanup_orphan_artifacts(db: "Datalayer", model: t.Optional[str] = None) -> t.List[str]:
    """Remove checkpoint folders that no ``Checkpoint`` row references.

    These are left by a crash: an unfinished copy (``.partial-*``), a finished copy whose row
    was never written, or the files of a checkpoint whose teardown was interrupted.
    Training runs this for its own model before it starts.

    :param db: The datalayer.
    :param model: Only this model's folders. ``None``: every model's; then no training
        may be writing checkpoints into this artifact store at the same time (a copy in
        progress looks exactly like an orphan).
    :return: The removed folders.
    """
    root = store_root(db)
    prefix = model_tag(model) if model is not None else CHECKPOINT_PREFIX
    referenced = referenced_artifact_ids(db)
    removed = []
    for name in sorted(os.listdir(root)):
        partial = name.startswith(PARTIAL_PREFIX + prefix)
        orphan = name.startswith(prefix) and name not in referenced
        if partial or orphan:
            path = os.path.join(root, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logging.info(f"Removed {len(removed)} orphaned checkpoint folder(s) from {root}")
    return removed
