"""Fixtures: a tiny Llama and its byte-level tokenizer, built at test time (nothing downloaded)."""

from __future__ import annotations

import os

# Offline and quiet before anything imports transformers / superduper.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")  # a test naming wandb never goes online
os.environ.setdefault("SUPERDUPER_LOG_LEVEL", "SUCCESS")  # not USER: no component trees
# One tokenized-data cache per test process: the suite runs in several processes
# (pytest-xdist), and a test that clears or counts cache entries sees only its own.
if "SD_TRANSFORMERS_DATA_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="sdt-data-cache-")
    os.environ["SD_TRANSFORMERS_DATA_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

import pytest  # noqa: E402

from plugin_tests import fixtures  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """Folder of a randomly initialised 2-layer Llama (hidden 64) and its tokenizer."""
    return fixtures.build_tiny_model(str(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def artifact_store(tmp_path):
    """A fresh absolute artifact store for this test (superduper reads it globally)."""
    from superduper import CFG

    old = CFG.artifact_store
    path = tmp_path / "artifact_store"
    CFG.artifact_store = f"filesystem://{path}"
    yield str(path)
    CFG.artifact_store = old


@pytest.fixture
def db(artifact_store, tmp_path):
    """An in-process mongomock datalayer with the arithmetic rows inserted."""
    from superduper import superduper

    db = superduper(f"mongomock://test-{tmp_path.name}", force_apply=True)
    fixtures.insert_rows(db)
    yield db
    db.disconnect()


@pytest.fixture
def sqlite_db(artifact_store, tmp_path):
    """A SQLite-file datalayer with the arithmetic rows: one that several processes share
    (Ray workers, a CLI in a subprocess), which mongomock cannot be."""
    from superduper import superduper

    db = superduper(f"sqlite:///{tmp_path / 'db.sqlite'}", force_apply=True)
    fixtures.insert_rows(db)
    yield db
    db.disconnect()


@pytest.fixture
def caplog_loguru():
    """The messages superduper's (loguru) logger writes during the test."""
    from loguru import logger

    messages: list = []
    sink = logger.add(lambda m: messages.append(str(m)), level="DEBUG")
    yield messages
    logger.remove(sink)


#: The longest files, started first: with one file per test process (`make test`), a long file
#: collected last would run alone at the end.
LONG_FILES = (
    "test_ray.py",
    "test_ray_restart.py",
    "test_crash_safety.py",
    "test_ray_objectives.py",
    "test_objectives.py",
    "test_cli_train.py",
)


def pytest_collection_modifyitems(config, items):
    """Long files first (stable otherwise)."""
    order = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: order.get(item.path.name, len(LONG_FILES)))
