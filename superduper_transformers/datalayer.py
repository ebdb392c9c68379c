"""Rebuild a datalayer in another process from its serialized config."""

from __future__ import annotations

import typing as t


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
    return build_datalayer(cfg)
