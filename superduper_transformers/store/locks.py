"""Locks that every process sharing an artifact store sees: ``flock`` on a file in the store.

Promotions, deletions and pruning read a model's pointers and aliases, decide, and then
write: two of them at once can each act on what the other is about to change (an alias
written to a checkpoint a prune just deleted; two promotions each rewriting the whole
``Promotions`` row, one entry lost). They are serialised per model by a lock file in
``<store>/.locks/``.

Why a file lock in the artifact store rather than a lock row in the database: every
process of a database must share its artifact store already (the checkpoints live
there), superduper 0.10 offers no atomic insert-if-absent on its tables (a second insert
with the same id succeeds on SQLite and MongoDB alike), and an ``flock`` is released by
the kernel when its holder dies, so a crashed process never leaves a stale lock to
expire. The store's file system must honour ``flock`` between its clients (a local disk,
NFSv4, CephFS, Lustre do; some FUSE object-store mounts do not).

The lock is re-entrant within a process (a prune inside a promotion does not deadlock)
and excludes the other threads of the process as it excludes other processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import typing as t

#: Folder of the lock files, inside the artifact store.
LOCKS_FOLDER = ".locks"
#: Seconds to wait for a lock before giving up with :class:`LockTimeout`.
DEFAULT_TIMEOUT = 300.0
_POLL = 0.02

_guard = threading.Lock()
_thread_locks: t.Dict[str, threading.RLock] = {}
_held: t.Dict[str, t.List[int]] = {}  # path -> [fd, depth]


class LockTimeout(TimeoutError):
    """A lock was held by another process for longer than the timeout."""


def lock_path(root: str, name: str) -> str:
    """``<root>/.locks/<name>.lock``, creating the folder.

    The folder is sticky and writable by all (as ``/tmp``): every user of a shared store
    can create lock files, and none can remove or replace another's.

    :param root: The artifact store's folder.
    :param name: The lock's name (a plain file name).
    """
    folder = os.path.join(root, LOCKS_FOLDER)
    if not os.path.isdir(folder):
        os.makedirs(folder, exist_ok=True)
        with contextlib.suppress(OSError):  # another user created it first
            os.chmod(folder, 0o1777)
    return os.path.join(folder, f"{name}.lock")


@contextlib.contextmanager
def file_lock(path: str, what: str, timeout: float = DEFAULT_TIMEOUT) -> t.Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    :param path: The lock file (see :func:`lock_path`).
    :param what: What the lock guards, for the timeout's message.
    :param timeout: Seconds to wait for another holder.
    :raises LockTimeout: naming the lock file and what it guards.
    """
    with _guard:
        local = _thread_locks.setdefault(path, threading.RLock())
    with local:
        entry = _held.get(path)
        if entry is None:
            entry = _held[path] = [_acquire(path, what, timeout), 0]
        entry[1] += 1
        try:
            yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])


def _acquire(path: str, what: str, timeout: float) -> int:
    # O_NOFOLLOW: a link planted in the shared folder is not followed. Read-only is
    # enough for flock, so a lock file created by another user of the store works too.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            raise LockTimeout(
                f"{what}: another process held the lock {path} for more than {timeout:.0f} s. "
                "Wait for it to finish (a promotion, a deletion, or a training pruning "
                "checkpoints), or find the process holding it (`fuser` on the file) if it hangs."
            )
        time.sleep(_POLL)
