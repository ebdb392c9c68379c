"""Find the fields of a component's children that superduper stores pickled.

superduper stores a field typed as an arbitrary object (a ``Metric``'s function, a
``Dataset``'s ``raw_data``) as a dill blob in the artifact store, and ``Component.setup``
unpickles every child's blobs: whoever can write that file (superduper makes them 0o777)
runs code in the next process that sets the component up. The plugin's own components
have no such field; this finds the ones a user's children would bring, reading rows only
(a child not loaded yet is read from its row, never set up), so that a model can refuse
them before anything is unpickled.
"""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Children of the plugin's own classes, known to have no pickled field (checked by
#: ``test_security.py``): a reference to one is not read again.
NOT_PICKLED = frozenset({"Checkpoint", "LLMTrainer", "ImportedMetric"})


#: How to give a validation without pickles (the fix in every message).
FIX = (
    "Give metrics as `ImportedMetric('name', function='package.module:function', kwargs={...})` "
    "(from superduper_transformers) and datasets as `Dataset('name', select=db['table'].select())` "
    "without `raw_data` or `pin=True`."
)


class PickledFieldError(ValueError):
    """A child component would be stored as a pickled blob."""


def refusal(owner: str, found: t.Sequence[str]) -> PickledFieldError:
    """The error refusing ``found`` (descriptions from :func:`pickled_fields`) of ``owner``."""
    return PickledFieldError(
        f"{owner}: {', '.join(found)} would be stored as a pickled blob in the artifact store, and "
        "every process that sets the model up would unpickle it (whoever can write that file could "
        f"run code there). {FIX}"
    )


def left_out(owner: str, field: str, found: t.Sequence[str]) -> str:
    """The warning that the stored ``field`` of ``owner`` was left out, unread."""
    return (
        f"{owner}: its stored {', '.join(found)} is a pickled blob in the artifact store; it was not "
        f"unpickled and `{field}` is left out of this copy of the model (whoever can write that file "
        "could run code here). Apply the model again with a validation of another identifier "
        f"(superduper itself would set up, so unpickle, a stored one of the same identifier): {FIX}"
    )


def pickled_fields(component: t.Any, db: t.Optional[Datalayer] = None) -> t.Dict[str, t.List[str]]:
    """Where ``component``'s children hold a field that superduper stores pickled.

    :param component: A component, as built or as loaded (not set up).
    :param db: The datalayer to read children not loaded yet from (None: skip them).
    :return: ``{field of component: [description, ...]}``, one description per pickled
        field below it, e.g. ``validation.metrics[0]` (Metric `exact`): field `object```.
    """
    from superduper import Component
    from superduper.base.datatype import JSON, ComponentRef, FieldType, _DillMixin, _PickleMixin

    found: t.List[str] = []
    seen: t.Set[int] = set()

    def visit(value: t.Any, where: str) -> None:
        if isinstance(value, ComponentRef):
            if value.object is not None:
                visit(value.object, where)
            elif db is not None and value.component not in NOT_PICKLED:
                visit(db.load(component=value.component, uuid=value.uuid, component_cache=False), where)
        elif isinstance(value, Component):
            if id(value) in seen:
                return
            seen.add(id(value))
            for name, datatype in type(value).class_schema.fields.items():
                field = vars(value).get(name)  # the stored value, not a property computed from it
                if isinstance(datatype, (_DillMixin, _PickleMixin)) and field is not None:
                    found.append(f"`{where}` ({type(value).__name__} `{value.identifier}`): field `{name}`")
                elif not isinstance(datatype, (JSON, FieldType)):  # plain data holds no component
                    visit(field, f"{where}.{name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}[{i}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]")

    out: t.Dict[str, t.List[str]] = {}
    for name, datatype in type(component).class_schema.fields.items():
        if not isinstance(datatype, (JSON, FieldType)):
            visit(vars(component).get(name), name)
            if found:
                out[name] = list(found)
                found.clear()
    return out
