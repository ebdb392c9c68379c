"""A component's ``uuid`` (its version key) computed from its ``breaks`` fields only.

superduper's ``Component.uuid`` hashes every field of the component (and, through
component fields, of its children), then keeps only the hashes of the ``breaks`` fields.
A ``Listener`` reads its ``outputs`` name, which hashes the listener and so its model,
once per output row: for an ``LLM`` (20 fields, a trainer with a query) that was a third
of the time a listener spent on 1,000 rows of a small model. :func:`breaking_uuid` is the
same value, computed from the fields that enter it; a test compares both.
"""

from __future__ import annotations

import copy
import typing as t

from superduper.base.constant import LENGTH_UUID
from superduper.misc.serialization import _asdict_inner
from superduper.misc.utils import hash_item

#: Fields superduper leaves out of the tree it hashes (``Component.get_merkle_tree``).
_NEVER_HASHED = frozenset({"uuid", "status", "details"})


def breaking_uuid(component: t.Any) -> str:
    """``Component.uuid`` of ``component``, hashing only its ``breaks`` fields.

    :param component: A superduper ``Component``.
    """
    schema = component.class_schema
    hashes = []
    for name in component.breaks:
        if name not in schema.fields or name in _NEVER_HASHED or name in component.metadata_fields:
            continue  # not in superduper's tree either
        # The value as superduper's ``asdict`` hands it to the field's datatype.
        value = _asdict_inner(getattr(component, name), dict, copy.copy)
        hashes.append(hash_item(None) if value is None else schema.fields[name].uuid(value)[:32])
    return hash_item([component.component, component.identifier] + hashes)[:LENGTH_UUID]
