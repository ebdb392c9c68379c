"""Open a datalayer from a URI or a serialized config, safely beside running trainings."""

from __future__ import annotations

import time
import typing as t

#: Attempts at building a datalayer while other processes delete components.
BUILD_ATTEMPTS = 5


def _retrying(build: t.Callable[[], t.Any]):
    """Run ``build``; retry when a component vanished while it was being loaded.

    superduper loads *every* component of the db while it builds a datalayer
    (``cluster.initialize``). A training in another process that prunes a checkpoint
    at that moment makes the build fail with ``NotFound`` for a component that was
    listed a millisecond earlier; the next attempt no longer lists it.
    """
    from superduper.base.exceptions import NotFound

    for attempt in range(1, BUILD_ATTEMPTS + 1):
        try:
            return build()
        except NotFound:
            if attempt == BUILD_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def connect(uri: str, **kwargs):
    """``superduper(uri, **kwargs)``, robust to trainings pruning checkpoints meanwhile.

    :param uri: Database URI (``mongodb://...``, ``sqlite:////abs/file.db``, ``mongomock://...``).
    :param kwargs: Passed to ``superduper`` (e.g. ``force_apply=True``).
    """
    from superduper import superduper

    return _retrying(lambda: superduper(uri, **kwargs))


def serialize_config(db) -> t.Dict[str, t.Any]:
    """The datalayer's config as a JSON-serialisable dict (what workers receive)."""
    return db.cfg.dict()


def datalayer_from_config(cfg: t.Any):
    """Build a datalayer from ``db.cfg.dict()`` (or a ``Config``) in this process.

    superduper builds the artifact store from the *global* ``CFG.artifact_store``,
    not from the config passed in, so it is set first: every process must see the
    same artifact store as the one that wrote the checkpoints.

    :param cfg: A dict from ``db.cfg.dict()`` or a ``superduper.base.config.Config``.
    """
    from superduper import CFG
    from superduper.base.build import build_datalayer
    from superduper.base.config import Config, _dataclass_from_dict

    if isinstance(cfg, dict):
        cfg = _dataclass_from_dict(Config, cfg)
    CFG.artifact_store = cfg.artifact_store
    return _retrying(lambda: build_datalayer(cfg))
