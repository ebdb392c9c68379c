"""Owner-only files: one rule for everything the plugin writes that holds weights or rows.

Weights memorise their training rows, which the database guards with credentials; so
the artifact store's checkpoints, the tokenized-data cache, the training output folders
and exports are all readable by their owner only. Giving others access is a deliberate
choice (a group ACL, a ``chmod``), not a default.
"""

from __future__ import annotations

import os
import stat

#: Modes of the plugin's folders and files: owner only.
DIR_MODE = 0o700
FILE_MODE = 0o600


def _chmod_unless_link(path: str, mode: int) -> None:
    # Linux has no lchmod: look first. Replacing an entry by a link between the look and
    # the chmod needs write access to its folder, which only the owner has.
    if not stat.S_ISLNK(os.lstat(path).st_mode):
        os.chmod(path, mode)


def restrict_permissions(directory: str) -> None:
    """Set ``directory`` and its folders to :data:`DIR_MODE`, its files to :data:`FILE_MODE`.

    Symbolic links are never followed: a link to a folder elsewhere (planted, or a
    user's own) keeps the target's mode, and nothing below it is visited.

    :raises ValueError: when ``directory`` itself is a link (naming it and the fix).
    """
    if os.path.islink(directory):
        raise ValueError(
            f"{directory} is a symbolic link (to {os.readlink(directory)!r}): the plugin makes only "
            "its own folders owner-only, never a link's target. Replace the link by a folder."
        )
    os.chmod(directory, DIR_MODE)
    for root, dirs, files in os.walk(directory):  # os.walk does not descend into links
        for name in dirs:
            _chmod_unless_link(os.path.join(root, name), DIR_MODE)
        for name in files:
            full = os.path.join(root, name)
            if stat.S_ISREG(os.lstat(full).st_mode):  # not a link, a socket or a FIFO
                os.chmod(full, FILE_MODE)


def private_dir(path: str) -> str:
    """``path`` as a folder only its owner can enter: created 0o700, or narrowed to 0o700
    when this user owns it. Another user's folder is left as it is (its owner decides).

    :return: ``path``.
    """
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077 and (not hasattr(os, "getuid") or st.st_uid == os.getuid()):
        os.chmod(path, DIR_MODE)
    return path
