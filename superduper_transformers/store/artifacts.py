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
its own model before it starts. File ids carry a tag of the database and of the model
(``ckpt-<db tag>-<model tag>-...``), so one model's clean-up never touches another model's
files, and one database's clean-up never touches the files of another database that
shares the artifact store (it cannot see that database's rows, so every folder of it
would look orphaned). The db tag comes from a random id stored in the database
(:mod:`superduper_transformers.store.identity`), not from its URI.

Copies are made safe for a shared store: a symlink in a checkpoint folder is refused
(following it would copy whatever it points at, e.g. a key file, into the store), and the
copied folders and files are readable by their owner only (:data:`DIR_MODE`, :data:`FILE_MODE`,
from ``_private``: superduper itself makes its folders 0o777).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import typing as t
import uuid

from superduper import logging

from superduper_transformers import _faults
from superduper_transformers._bars import MIN_BYTES_FOR_A_BAR, progress_bar
from superduper_transformers._private import DIR_MODE, FILE_MODE, restrict_permissions  # noqa: F401

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Prefix of the artifact-store folders of training checkpoints.
CHECKPOINT_PREFIX = "ckpt-"
#: Prefix of a checkpoint folder whose copy has not finished.
PARTIAL_PREFIX = ".partial-"


class CheckpointError(RuntimeError):
    """A stored checkpoint cannot be used; the message names the checkpoint and the file."""


def _hash12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def database_tag(db: Datalayer, create: bool = True) -> t.Optional[str]:
    """``ckpt-<12 hex>-``: the prefix of every checkpoint folder written by ``db``.

    The hex digits come from the database's random id, stored in the database
    (:mod:`superduper_transformers.store.identity`), never from its URI: two databases
    with the same URI text (``mongodb://mongo:27017/app`` on two hosts) sharing one
    artifact store must not clean up each other's folders.

    :param db: The datalayer.
    :param create: Create the database's id if it has none; else return None then.
    """
    from superduper_transformers.store.identity import database_id

    found = database_id(db, store_root(db), create=create)
    return f"{CHECKPOINT_PREFIX}{found[:12]}-" if found else None


def model_tag(db: Datalayer, model: str) -> str:
    """``ckpt-<db hex>-<model hex>``: the prefix of every checkpoint folder of ``model`` in ``db``.

    A hash, not the identifier itself: identifiers may hold characters a folder name cannot.
    """
    return f"{database_tag(db)}{_hash12(model)}"


def model_lock(db: Datalayer, model: str) -> t.ContextManager[None]:
    """The lock that serialises promotions, deletions and pruning of ``model`` in ``db``,
    across every process sharing the artifact store (:mod:`superduper_transformers.store.locks`)."""
    from superduper_transformers.store import locks

    return locks.file_lock(locks.lock_path(store_root(db), model_tag(db, model)), f"Model `{model}`")


def round_lock(db: Datalayer, model: str, timeout: float) -> t.ContextManager[None]:
    """The lock that lets one training round of ``model`` run at a time, across every
    process sharing the artifact store; its own file, so that promotions of the model
    (:func:`model_lock`) go on during a round.

    :param timeout: Seconds to wait for another holder (0: fail at once with
        :class:`~superduper_transformers.store.locks.LockTimeout`).
    """
    from superduper_transformers.store import locks

    path = locks.lock_path(store_root(db), f"{model_tag(db, model)}-round")
    return locks.file_lock(path, f"The training rounds of model `{model}`", timeout)


def new_artifact_id(db: Datalayer, model: str) -> str:
    """A fresh artifact id for a checkpoint of ``model`` (random: never reused after a crash)."""
    return f"{model_tag(db, model)}-{uuid.uuid4().hex}"


def refuse_links(directory: str, what: str) -> None:
    """Raise if anything under ``directory`` is a symlink.

    A checkpoint written by a trainer holds none; following one would copy (and hash)
    whatever it points at, such as a file outside the output folder, into the shared store.

    :param directory: The folder to check.
    :param what: Names the checkpoint in the error.
    :raises CheckpointError: naming the link.
    """
    for root, dirs, files in os.walk(directory):
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            if os.path.islink(full):
                raise CheckpointError(
                    f"{what}: `{os.path.relpath(full, directory)}` in {directory} is a symbolic "
                    f"link (to {os.readlink(full)!r}); checkpoints may only hold regular files "
                    "and folders. Replace the link with a copy of the file, or remove it."
                )


def store_root(db: Datalayer) -> str:
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
    db: Datalayer, source: str, artifact_id: str, verify: t.Callable[[str], None], step: int
) -> str:
    """Copy the folder ``source`` into the artifact store under ``artifact_id``, atomically.

    :param db: The datalayer.
    :param source: The checkpoint folder written by the trainer.
    :param artifact_id: The file id (from :func:`new_artifact_id`).
    :param verify: Called with the copied folder before it becomes visible; raises if bad.
    :param step: The checkpoint's step (names the crash point of fault-injection tests).
    :return: ``<store>/<artifact_id>/<basename of source>``.
    :raises CheckpointError: when ``source`` holds a symlink.
    """
    root = store_root(db)
    partial = os.path.join(root, PARTIAL_PREFIX + artifact_id)
    name = os.path.basename(os.path.normpath(source))
    what = f"Checkpoint folder {source}"
    refuse_links(source, what)
    copied = []
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(source) for f in files)
    bar = progress_bar(total, f"Storing {name}", minimum=MIN_BYTES_FOR_A_BAR)

    def copy(src, dst):
        if os.path.islink(src):  # appeared after the check above
            refuse_links(source, what)
        shutil.copy2(src, dst, follow_symlinks=False)
        copied.append(dst)
        bar.update(os.path.getsize(dst))
        if len(copied) == 1:
            _faults.crash_point("copy", step)

    try:
        # symlinks=True: a folder link is recreated as a link (and refused by the
        # manifest check in `verify`), never followed.
        shutil.copytree(source, os.path.join(partial, name), symlinks=True, copy_function=copy)
        for path in copied:
            _fsync(path)
        verify(os.path.join(partial, name))
        restrict_permissions(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        bar.close()
    final = os.path.join(root, artifact_id)
    os.rename(partial, final)
    _fsync(root)  # make the rename itself durable
    return os.path.join(final, name)


def referenced_artifact_ids(db: Datalayer) -> t.Set[str]:
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


def cleanup_orphan_artifacts(db: Datalayer, model: t.Optional[str] = None) -> t.List[str]:
    """Remove checkpoint folders that no ``Checkpoint`` row references.

    These are left by a crash: an unfinished copy (``.partial-*``), a finished copy whose row
    was never written, or the files of a checkpoint whose teardown was interrupted.
    Training runs this for its own model before it starts.

    :param db: The datalayer.
    :param model: Only this model's folders. ``None``: every model's (of this database);
        then no training may be writing checkpoints into this database at the same time
        (a copy in progress looks exactly like an orphan).
    :return: The removed folders.
    """
    root = store_root(db)
    # Only folders this database wrote: another database sharing the store has rows
    # this one cannot see, so all its folders would look orphaned. Folders named by
    # earlier versions (a tag of the URI, or none) are never removed here: a database
    # with the same URI text could own them.
    tag = database_tag(db, create=False)
    if tag is None:  # no id yet: this database never wrote a folder under one
        return []
    prefix = tag + _hash12(model) if model is not None else tag
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
