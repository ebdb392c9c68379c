"""Open a datalayer from a URI or a serialized config, safely beside running trainings."""

from __future__ import annotations

import typing as t


class _Vanished:
    """Stands for a component deleted between being listed and being loaded."""


def _build(build: t.Callable[..., t.Any]):
    """Build a datalayer whose start-up survives components deleted meanwhile.

    superduper's start-up (``cluster.initialize``) lists *every* component of the db
    and then loads each one, to find the listeners, cron jobs and vector indexes it
    must serve. A training in another process that prunes a checkpoint between the
    listing and the loading made that start-up fail with ``NotFound``, and under a
    fast save schedule every retry did too. A component that no longer exists has
    nothing to serve, so during start-up (only) a vanished one is skipped.

    :param build: ``build_datalayer``-like callable accepting ``initialize_cluster``.
    """
    from superduper.base.exceptions import NotFound

    db = build(initialize_cluster=False)
    load, show = db.load, db.show

    def tolerant_load(*args, **kwargs):
        try:
            return load(*args, **kwargs)
        except NotFound:
            return _Vanished()

    def tolerant_show(*args, **kwargs):
        try:
            return show(*args, **kwargs)
        except NotFound:
            return {}

    db.load, db.show = tolerant_load, tolerant_show
    try:
        db.cluster.initialize()
    finally:
        del db.load, db.show  # back to the class's methods
    return db


def connect(uri: str, **kwargs):
    """``superduper(uri, **kwargs)``, safe to call while trainings prune checkpoints.

    :param uri: Database URI (``mongodb://...``, ``sqlite:////abs/file.db``, ``mongomock://...``).
    :param kwargs: Passed to ``superduper`` (e.g. ``force_apply=True``).
    """
    from superduper import superduper

    return _build(lambda **kw: superduper(uri, **kwargs, **kw))


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
    return _build(lambda **kw: build_datalayer(cfg, **kw))
