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


def _sql_backend(db):
    """The superduper-sql backend holding ``db``'s component tables, or ``None``.

    Component rows live in the metadata datalayer (``db.metadata.db``), which can differ
    from the data's. MongoDB and mongomock are schemaless: nothing to migrate there.

    :param db: The datalayer.
    """
    try:
        from superduper_sql.data_backend import IbisDataBackend
    except ImportError:  # superduper-sql not installed: no SQL backend in use
        return None
    backend = db.metadata.db.databackend
    backend = getattr(backend, "type", backend)  # superduper wraps it in a DataBackendProxy
    return backend if isinstance(backend, IbisDataBackend) else None


def _column_sql(backend, conn, name: str, datatype: t.Any) -> str:
    """The column definition superduper-sql gives field ``name`` when it creates a table.

    Goes the way of ``create_table_and_schema``: superduper datatype -> ibis type
    (``convert_schema_to_fields``: JSON is text where the database has no JSON type)
    -> the dialect's SQL through ibis, so the added column matches a fresh table's.

    :param backend: The superduper-sql data backend.
    :param conn: An ibis connection of that backend.
    :param name: The field's name.
    :param datatype: The field's superduper datatype (from ``cls.class_schema.fields``).
    """
    import ibis
    from superduper.base.schema import Schema
    from superduper_sql.utils import convert_schema_to_fields

    mapping = convert_schema_to_fields(
        Schema(fields={name: datatype}), backend.json_native, backend.vector_impl
    )
    mapping = backend.db_helper.process_schema_types(mapping)
    (column,) = ibis.schema(mapping).to_sqlglot(conn.dialect)
    return column.sql(conn.dialect)


def migrate_component_tables(db, classes: t.Iterable[type]) -> t.Dict[str, t.List[str]]:
    """Add the fields of ``classes`` that an existing SQL table of theirs lacks.

    A database created by an older version of this package has component tables
    without the fields added since (e.g. ``TrainingRun.data_fingerprint``). superduper-sql
    then refuses every write (``CompileError: Unconsumed column names``), and a column
    added by hand is not enough: superduper encodes rows by the table's stored
    description (the ``Table`` row named like the class, ``fields``: column -> datatype),
    which does not know the field either (``type 'dict' is not supported``). For each
    missing field this adds the SQL column (NULL in existing rows: the components fill
    their defaults in ``postinit``) and the field to the stored description.

    Cheap when nothing is missing (one listing, then per class one column listing and
    one ``Table`` row read) and idempotent: it only adds what is missing, so two
    processes migrating at once, or a migration cut off between its two steps, end in
    the same state. Does nothing on MongoDB/mongomock (schemaless) and for classes whose
    table does not exist yet (superduper creates it with every field).

    :param db: The datalayer.
    :param classes: Component classes of this package (``LLM``, ``LLMTrainer``,
        ``Checkpoint``, ``TrainingRun``); passed in because the store may not import the
        components.
    :return: ``{table: [fields added]}`` for the tables it changed.
    :raises RuntimeError: naming the table, the field, its column type and the SQL to
        run by hand, when the database refuses to add a column.
    """
    backend = _sql_backend(db)
    if backend is None:
        return {}
    meta = db.metadata.db
    tables = set(backend.list_tables())
    added: t.Dict[str, t.List[str]] = {}
    for cls in classes:
        name = cls.__name__
        if name not in tables:
            continue
        wanted = cls.class_schema.fields  # superduper datatypes, in declaration order
        with backend.connection_manager.get_connection() as conn:
            columns = set(conn.table(name).columns)
        rows = meta["Table"].filter(meta["Table"]["identifier"] == name).execute(raw=True)
        stored = [r.get("fields") or {} for r in rows]
        missing = [f for f in wanted if f not in columns or any(f not in fields for fields in stored)]
        if not missing:
            continue
        for field in missing:
            if field not in columns:
                _add_column(backend, name, field, wanted[field])
        # Only the missing entries are added: the types already recorded stay as they are.
        new_names = cls._new_fields  # the datatype names the stored description holds
        for r in rows:
            fields = dict(r.get("fields") or {})
            if all(f in fields for f in missing):
                continue
            fields.update({f: new_names[f] for f in missing if f not in fields})
            # `do_replace` encodes the dict for the `fields` column (JSON as text on SQLite)
            # without `db._post_query`: a description change is no data event.
            meta.databackend.do_replace("Table", {"uuid": r["uuid"]}, {"fields": fields}, raw=True)
        added[name] = missing
    if added:
        _forget_descriptions(added)
    return added


def _forget_descriptions(tables: t.Iterable[str]) -> None:
    """Drop the stale descriptions of ``tables`` from superduper's per-apply cache.

    ``db.apply`` reads table descriptions through a cache that lives as long as the
    apply (``MetaDataStore.cache``, a context variable). A migration run while planning
    an apply (``create_jobs``) follows reads of the old description in the same apply
    (e.g. loading the stored trainer to compare it); without this the apply would go on
    encoding rows without the new fields.

    :param tables: The tables whose description changed.
    """
    from superduper.base import metadata

    cache = metadata._component_cache.get()
    if cache:
        for name in tables:
            cache.pop(name, None)


def _add_column(backend, table: str, field: str, datatype: t.Any) -> None:
    """``ALTER TABLE table ADD COLUMN field <type>``, tolerating a concurrent migration.

    :param backend: The superduper-sql data backend.
    :param table: The component table.
    :param field: The field to add.
    :param datatype: Its superduper datatype.
    """
    import sqlglot as sg

    with backend.connection_manager.get_connection() as conn:
        column = _column_sql(backend, conn, field, datatype)
        statement = f"ALTER TABLE {sg.table(table, quoted=True).sql(conn.dialect)} ADD COLUMN {column}"
        try:
            with conn.begin() as cur:
                cur.execute(statement)
        except Exception as e:
            if field in conn.table(table).columns:
                return  # another process added it meanwhile
            raise RuntimeError(
                f"Cannot add the field `{field}` (column `{column}`) to the component table "
                f"`{table}` of this database, created by an older superduper_transformers: {e}. "
                f"Add it by hand (`{statement}`), or restore write access to the database, "
                "then open it again."
            ) from e


def ensure_table(db, name: str, fields: t.Mapping[str, str], **apply_kwargs: t.Any) -> None:
    """Create the table ``name`` with ``fields`` unless the db has it already.

    :param db: The datalayer.
    :param name: The table's name.
    :param fields: Column name -> superduper type (``"str"``, ``"json"``, ...).
    :param apply_kwargs: Further keywords of ``db.apply`` (``jobs=False``).
    """
    from superduper import Table

    if name not in db.show("Table"):
        db.apply(Table(name, fields=dict(fields)), force=True, **apply_kwargs)
