"""A random identity for each database, stored in the database itself.

Checkpoint folders in a shared artifact store are named after the database that wrote
them, so that one database's clean-up never deletes another's (it cannot see the other's
rows: every folder of it would look orphaned). A name derived from the URI is not enough:
``mongodb://mongo:27017/app`` reads the same for a staging and a production database on
their own hosts. So each database gets a random id, created once, on first use, as a
``DatabaseIdentity`` row; every process reading that database reads the same id.

Creating it is serialised by a lock file in the artifact store
(:mod:`superduper_transformers.store.locks`): two processes starting on a fresh database
at once read, under the lock, what the first one wrote.
"""

from __future__ import annotations

import time
import typing as t
import uuid
import weakref

from superduper import Component

from superduper_transformers.store import locks, sql_components

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: The identifier of the one ``DatabaseIdentity`` row of a database.
IDENTIFIER = "database"

_cache: weakref.WeakKeyDictionary[t.Any, str] = weakref.WeakKeyDictionary()


class DatabaseIdentity(Component):
    """The random id of this database (one row, written on first use).

    :param tag: 32 hex digits, random; names this database's folders in the artifact store.
    :param created: Unix time of creation.
    """

    tag: str = ""
    created: float = 0.0


def _stored(db: Datalayer) -> t.Optional[str]:
    from superduper.base import exceptions

    try:
        rows = db["DatabaseIdentity"].select("identifier", "tag").execute()
    except exceptions.NotFound:
        return None
    tags = sorted(r["tag"] for r in rows if r.get("identifier") == IDENTIFIER and r.get("tag"))
    # More than one can only come from a process that bypassed the lock; all agree on
    # the smallest (creation below never adds a second).
    return tags[0] if tags else None


def database_id(db: Datalayer, store_root: str, create: bool = True) -> t.Optional[str]:
    """The random id of ``db`` (created under a store lock on first use).

    :param db: The datalayer.
    :param store_root: The artifact store's folder (holds the creation lock).
    :param create: Create the id when the database has none; else return None then.
    """
    cached = _cache.get(db)
    if cached:
        return cached
    found = _stored(db)
    if found is None and create:
        with locks.file_lock(locks.lock_path(store_root, "database-identity"), "Creating the database id"):
            found = _stored(db)  # another process may have written it while we waited
            if found is None:
                identity = DatabaseIdentity(IDENTIFIER, tag=uuid.uuid4().hex, created=time.time())
                sql_components.apply_new(db, identity)
                found = _stored(db)
    if found:
        _cache[db] = found
    return found
