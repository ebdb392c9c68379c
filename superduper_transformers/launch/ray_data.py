"""Ray Data: the training rows read on the cluster, tokenized there, split across the workers.

The pattern of Ray's transformers integration: the driver builds a lazy
``ray.data.Dataset`` (read from the database, tokenized with ``map_batches`` in
Ray's tasks), hands it to ``TorchTrainer(datasets={"train": ds})``, and each worker
trains on its own ``ray.train.get_dataset_shard("train")``. Nothing pickles the rows
into a worker, and the driver holds at most one page of them.

Where the rows are read (:class:`RowSource`):

- a SQLite datalayer and a plain ``db[table].select()``: ``ray.data.read_sql``;
- ``mongodb://`` and a plain select, with ``pymongoarrow`` installed: ``ray.data.read_mongo``;
- anything else: the query's pages, read here one at a time and put into Ray's
  object store (``ray.data.from_arrow_refs``).

Ray is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import dataclasses as dc
import functools
import json
import typing as t

from superduper_transformers.hf import data
from superduper_transformers.store import rows as store_rows

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Rows per ``map_batches`` call when tokenizing on the cluster.
TOKENIZE_BATCH = 1000
#: Rows each worker shuffles among (Ray's ``local_shuffle_buffer_size``).
SHUFFLE_BUFFER = 1000
#: CPUs each read/tokenize task asks for. None: Ray's default (1). The training workers
#: usually hold every CPU of the cluster (``ScalingConfig``): tasks that ask for one
#: would wait forever ("Cluster resources are not enough"), so they ask for none and
#: run beside the workers; reading and tokenizing short rows costs little next to training.
DATA_TASK_CPUS = 0
#: Tokenizing actors (each holds one tokenizer).
TOKENIZE_ACTORS = 1


@dc.dataclass
class RowSource:
    """Where Ray Data reads the training rows, and how they are tokenized there.

    Built on the driver by :func:`ray_row_source`; turned into a ``ray.data.Dataset``
    by :func:`to_ray_dataset` once Ray is running.

    :param rows: The rows as ``store.rows.FoldRows`` (the paged fallback reads them).
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer (tasks load it).
    :param tokenization: ``X``, ``y``, ``max_length``, ``prompt_template``, ``chat_format``.
    :param sql: ``(uri, statement)`` for ``ray.data.read_sql``, or None.
    :param mongo: ``read_mongo`` keywords, or None.
    :param json_columns: Key columns a SQL table stores as JSON text (conversations).
    """

    rows: t.Any
    tokenizer_kwargs: t.Dict[str, t.Any]
    tokenization: t.Dict[str, t.Any]
    sql: t.Optional[t.Tuple[str, str]] = None
    mongo: t.Optional[t.Dict[str, t.Any]] = None
    json_columns: t.List[str] = dc.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        how = "read_sql" if self.sql else "read_mongo" if self.mongo else "pages"
        return f"RowSource({how}, {self.rows!r})"


def ray_row_source(db: Datalayer, select, rows, tokenizer_kwargs, tokenization) -> RowSource:
    """How the cluster reads ``rows`` (the ``FoldRows`` of ``select``'s training fold).

    :param db: The datalayer.
    :param select: The trainer's ``select``.
    :param rows: The training rows (``FoldRows``, or a list given to ``fit`` directly).
    :param tokenizer_kwargs: The tokenizer's ``from_pretrained`` keywords.
    :param tokenization: ``X``, ``y``, ``max_length``, ``prompt_template``, ``chat_format``.
    """
    source = RowSource(rows, dict(tokenizer_kwargs), dict(tokenization))
    if not isinstance(rows, store_rows.FoldRows):
        return source  # values handed to `fit` directly: only their pages can be read
    keys = [k for k in (tokenization["X"], tokenization["y"]) if k is not None]
    source.sql = store_rows.sql_source(db, select, rows.fold, keys)
    if source.sql is not None:
        source.json_columns = store_rows.json_columns(db, select.table, keys)
    else:
        source.mongo = store_rows.mongo_source(db, select, rows.fold, keys)
    return source


# -- driver, with Ray running ---------------------------------------------
def to_ray_dataset(source: RowSource):
    """The tokenized ``ray.data.Dataset`` of ``source``, read and tokenized by Ray's tasks."""
    import ray.data

    if source.sql is not None:
        uri, statement = source.sql
        path = uri[len("sqlite://") :]
        ds = ray.data.read_sql(statement, functools.partial(_sqlite_connect, path), **_task_args())
    elif source.mongo is not None:
        ds = ray.data.read_mongo(**source.mongo, ray_remote_args=_task_args())
    else:
        ds = ray.data.from_arrow_refs([ray.put(_page_table(page)) for page in data.pages(source.rows)])
    tokenized = ds.map_batches(
        Tokenize,
        batch_size=TOKENIZE_BATCH,
        batch_format="pyarrow",
        # One tokenizing actor (more with TOKENIZE_ACTORS): it loads the tokenizer once.
        # Zero-CPU tasks would otherwise be started without limit, each process
        # importing transformers.
        concurrency=TOKENIZE_ACTORS,
        **_task_args(),
        fn_constructor_kwargs=dict(
            tokenizer_kwargs=json.dumps(source.tokenizer_kwargs, sort_keys=True),
            tokenization=source.tokenization,
            json_columns=list(source.json_columns),
        ),
    )
    # Tokenized once, kept in Ray's object store (spilled to disk when it outgrows it;
    # this process holds only references): every epoch would otherwise read and
    # tokenize the table again.
    return tokenized.materialize()


def _task_args() -> t.Dict[str, t.Any]:
    return {} if DATA_TASK_CPUS is None else {"num_cpus": DATA_TASK_CPUS}


def _sqlite_connect(path: str):
    import sqlite3

    return sqlite3.connect(path)


def _page_table(page):
    """A page of rows as an Arrow table (conversations as JSON text: Arrow needs one type)."""
    import pyarrow as pa

    encoded = [{k: json.dumps(v) if data.is_conversation(v) else v for k, v in r.items()} for r in page]
    return pa.Table.from_pylist(encoded)


# -- Ray's tasks ----------------------------------------------------------
class Tokenize:
    """Ray's actor tokenizing batches of rows (Arrow) into examples (Arrow), labels as
    ``hf.data.tokenize``.

    :param tokenizer_kwargs: The tokenizer's ``from_pretrained`` keywords, as JSON.
    :param tokenization: ``X``, ``y``, ``max_length``, ``prompt_template``, ``chat_format``.
    :param json_columns: Key columns holding conversations as JSON text.
    """

    def __init__(self, tokenizer_kwargs: str, tokenization: t.Dict[str, t.Any], json_columns):
        from superduper_transformers.hf.loading import load_tokenizer

        self.tokenizer = load_tokenizer(json.loads(tokenizer_kwargs))
        self.tokenization = dict(tokenization)
        self.json_columns = set(json_columns)

    def __call__(self, batch):
        keys = [k for k in (self.tokenization["X"], self.tokenization["y"]) if k is not None]
        rows = batch.select(keys).to_pylist()
        for row in rows:
            for k in keys:
                value = row[k]
                if isinstance(value, str) and (k in self.json_columns or value.startswith('[{"')):
                    try:
                        row[k] = json.loads(value)
                    except ValueError:
                        pass  # text that only looks like JSON
        table = data.encode_table(self.tokenizer, rows, **self.tokenization)
        return table.drop_columns([data.STATUS_COLUMN]).replace_schema_metadata(None)


# -- workers --------------------------------------------------------------
def shard_dataset(shard, seed: int = 0):
    """This worker's shard (``ray.train.get_dataset_shard``) as a ``datasets.IterableDataset``.

    trl's ``SFTTrainer`` takes ``datasets`` types only. Each pass over it is one epoch
    of the shard, shuffled locally.
    """
    return data.iterable_dataset(
        functools.partial(_shard_rows, shard, seed),
    )


def _shard_rows(shard, seed: int):
    batches = shard.iter_batches(
        batch_size=256,
        batch_format="pyarrow",
        local_shuffle_buffer_size=SHUFFLE_BUFFER,
        local_shuffle_seed=seed,
    )
    for batch in batches:
        yield from batch.to_pylist()


def use_own_shard(trainer):
    """Make ``trainer`` read its train dataloader from its own shard as it is.

    Accelerate would split an iterable dataset once more across the processes (each
    rank keeping every n-th batch of *its* shard, losing the rest): the shard already
    is this worker's part. The class swap is the way Ray's ``prepare_trainer`` hooks
    the same method (the HF trainer has no other hook for its dataloader).
    """
    from torch.utils.data import DataLoader

    base = type(trainer)

    class ShardTrainer(base):
        def get_train_dataloader(self):
            return DataLoader(
                self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.data_collator
            )

    ShardTrainer.__name__ = base.__name__
    trainer.__class__ = ShardTrainer
    return trainer
