"""No code runs from stored settings; no secret leaves the process."""

from __future__ import annotations

import json
import os
import types

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, LLMTrainer
from superduper_transformers.trainer_args import ConfigError

SECRET = "S3CR3T-planted-9f2c"


# -- 1. ray_configs is stored as plain JSON, never pickled ----------------------------


def test_ray_configs_are_stored_as_plain_json(db, tiny_model_dir, artifact_store):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig

    from superduper_transformers.launch.ray_settings import ray_config_objects

    configs = {
        "scaling_config": ScalingConfig(num_workers=2),
        "run_config": RunConfig(storage_path="/abs/ray", checkpoint_config=CheckpointConfig(num_to_keep=2)),
        "num_cpus": 2,
    }
    llm = fixtures.make_llm(db, tiny_model_dir, ray_configs=configs)
    stored = llm.trainer.ray_configs
    assert stored["scaling_config"] == {"num_workers": 2} and stored["num_cpus"] == 2
    assert stored["run_config"]["storage_path"] == "/abs/ray"
    assert stored["run_config"]["checkpoint_config"] == {"num_to_keep": 2}
    assert json.loads(json.dumps(stored)) == stored
    before = set(os.listdir(artifact_store)) if os.path.isdir(artifact_store) else set()
    db.apply(llm.trainer, force=True, jobs=False)  # (an LLM with it would refuse mongomock for Ray)
    after = set(os.listdir(artifact_store)) if os.path.isdir(artifact_store) else set()
    assert after == before  # no blob was written for it

    (row,) = db["LLMTrainer"].filter(db["LLMTrainer"]["identifier"] == "tiny-trainer").execute()
    assert dict(row)["ray_configs"] == stored
    # no field is stored as a (pickled) blob reference
    assert "&:blob:" not in json.dumps([dict(r) for r in db["LLMTrainer"].execute()], default=str)
    reloaded = db.load("LLMTrainer", "tiny-trainer").ray_configs
    scaling, run = ray_config_objects(reloaded)
    assert scaling == ScalingConfig(num_workers=2)
    assert run.storage_path == "/abs/ray" and run.checkpoint_config.num_to_keep == 2


def test_ray_configs_that_are_not_plain_data_are_refused(db, tiny_model_dir):
    from ray.train import ScalingConfig

    with pytest.raises(ConfigError, match=r"`ray_configs\['run_config'\]\['callbacks'\]\[0\]` is a object"):
        fixtures.make_llm(
            db,
            tiny_model_dir,
            ray_configs={
                "scaling_config": ScalingConfig(num_workers=2),
                "run_config": {"callbacks": [object()]},
            },
        )
    with pytest.raises(ConfigError, match=r"`ray_configs\['runtime_env'\]\['hook'\]` is a function"):
        fixtures.make_llm(
            db,
            tiny_model_dir,
            ray_configs={"scaling_config": {"num_workers": 1}, "runtime_env": {"hook": lambda: None}},
        )


def test_no_component_of_the_plugin_has_a_pickled_field(db):
    from superduper_transformers.checkpoint import Checkpoint
    from superduper_transformers.promote import Promotions
    from superduper_transformers.resume import TrainingRun

    for cls in (LLM, LLMTrainer, Checkpoint, TrainingRun, Promotions):
        for name, datatype in cls.class_schema.fields.items():
            kind = str(datatype).lower()
            if (cls, name) == (LLMTrainer, "transform"):  # superduper's Trainer field: refused
                continue
            assert "dill" not in kind and "pickle" not in kind, (cls.__name__, name, kind)
    with pytest.raises(ConfigError, match="`transform` is not used by LLMTrainer"):
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), transform=len)


# -- 2. secrets: refused in stored settings, redacted in Ray's metadata ---------------


def test_a_hub_token_is_refused_without_showing_it(db, tiny_model_dir):
    with pytest.raises(ConfigError, match="`training_kwargs` has `hub_token`, a credential") as e:
        fixtures.make_llm(db, tiny_model_dir, hub_token=f"hf_{SECRET}")
    assert SECRET not in str(e.value) and SECRET not in repr(e.value)
    with pytest.raises(ValueError, match="`model_kwargs` has `token`, a credential") as e:
        LLM("tiny", model_name_or_path=tiny_model_dir, model_kwargs={"token": f"hf_{SECRET}"})
    assert SECRET not in str(e.value)
    assert "LLM" not in db.show() and "LLMTrainer" not in db.show()
    # Special tokens of a tokenizer are not credentials.
    fixtures.make_llm(db, tiny_model_dir, eos_token="</s>")


def test_credentials_in_callback_kwargs_or_ray_env_vars_are_refused(db, tiny_model_dir):
    from superduper_transformers.launch.ray_settings import RayConfigError, check_ray_configs

    callback = {"class": "plugin_tests.fixtures:HoldAt", "kwargs": {"step": 1, "api_key": SECRET}}
    with pytest.raises(ConfigError, match=r"`callbacks\[0\]\['kwargs'\]` has `api_key`, a credential") as e:
        fixtures.make_llm(db, tiny_model_dir, callbacks=[callback])
    assert SECRET not in str(e.value) and "read it from the environment (`os.environ`)" in str(e.value)
    nested = {"class": "plugin_tests.fixtures:HoldAt", "kwargs": {"auth": {"password": SECRET}}}
    with pytest.raises(ConfigError, match=r"`callbacks\[0\]\['kwargs'\]\['auth'\]` has `password`"):
        fixtures.make_llm(db, tiny_model_dir, callbacks=[nested])

    ray = {"scaling_config": {"num_workers": 1}, "runtime_env": {"env_vars": {"HF_TOKEN": f"hf_{SECRET}"}}}
    where = r"`ray_configs\['runtime_env'\]\['env_vars'\]` has `HF_TOKEN`, a credential"
    with pytest.raises(ConfigError, match=where) as e:
        fixtures.make_llm(db, tiny_model_dir, ray_configs=ray)
    assert SECRET not in str(e.value) and "set it in the environment of the Ray cluster" in str(e.value)
    with pytest.raises(RayConfigError, match=where):  # `ray_train(ray_configs=...)` checks them too
        check_ray_configs(ray)
    assert "LLM" not in db.show() and "LLMTrainer" not in db.show()
    # Settings that are not credentials pass.
    ray["runtime_env"]["env_vars"] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    check_ray_configs(ray)


def test_names_with_double_quotes_are_quoted_in_ray_datas_sql(tmp_path):
    """`read_sql`'s statement quotes table and column names: `a"b` is a column, and a
    crafted key cannot read another table."""
    import sqlite3

    from superduper_transformers.store.rows import sql_source

    path = tmp_path / "rows.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "my""facts" ("x" TEXT, "a""b" TEXT, "_fold" TEXT)')
    con.execute("INSERT INTO \"my\"\"facts\" VALUES ('1+1=', '2', 'train'), ('2+2=', '4', 'valid')")
    con.execute("CREATE TABLE secrets (pw TEXT)")
    con.execute("INSERT INTO secrets VALUES (?)", (SECRET,))
    con.commit()

    class Select:
        table = 'my"facts'

        def __str__(self):
            return f"{self.table}.select()"

    db = types.SimpleNamespace(cfg=types.SimpleNamespace(data_backend=f"sqlite:///{path}"))
    _, statement = sql_source(db, Select(), "train", ["x", 'a"b'])
    assert con.execute(statement).fetchall() == [("1+1=", "2")]
    _, statement = sql_source(db, Select(), "it's", ["x"])  # a quote in the fold too
    assert con.execute(statement).fetchall() == []
    crafted = 'x" , (SELECT pw FROM secrets) AS "y'
    _, statement = sql_source(db, Select(), "train", [crafted, "x"])
    # One identifier that names no column (SQLite then reads it as the text itself).
    assert con.execute(statement).fetchall() == [(crafted, "1+1=")]


def test_the_db_password_never_reaches_ray_run_metadata(monkeypatch, tmp_path, tiny_model_dir):
    from ray.train.v2._internal.state.schema import _to_json_serializable_value

    from superduper_transformers.hf.job import TrainJob
    from superduper_transformers.launch import ray_train as rt
    from superduper_transformers.trainer_args import build_sft_config

    uri = f"mongodb://trainer:{SECRET}@db.example:27017/training"
    cfg = {"data_backend": uri, "artifact_store": f"filesystem://{tmp_path}/store"}
    db = types.SimpleNamespace(
        cfg=types.SimpleNamespace(
            data_backend=uri, artifact_store=cfg["artifact_store"], dict=lambda: dict(cfg)
        ),
        show=lambda *a: ["tiny"],
    )
    llm = types.SimpleNamespace(identifier="tiny")
    trainer = LLMTrainer("t", key=("x", "y"), select=None)
    args = build_sft_config(trainer, output_dir=str(tmp_path / "out"), has_eval=False)
    job = TrainJob(args, [], None, {"pretrained_model_name_or_path": tiny_model_dir}, {})
    captured = {}

    class FakeTorchTrainer:
        def __init__(self, fn, train_loop_config, **kwargs):
            captured["loop"] = train_loop_config

        def fit(self):
            raise RuntimeError("stop here")

    import contextlib

    monkeypatch.setattr("ray.train.torch.TorchTrainer", FakeTorchTrainer)
    monkeypatch.setattr(rt, "ray_session", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="stop here") as e:
        rt.ray_train(job, db=db, llm=llm, ray_configs={"scaling_config": {"num_workers": 1}})
    assert SECRET not in str(e.value)
    loop = captured["loop"]
    recorded = json.dumps(_to_json_serializable_value(loop))  # what Ray stores and serves
    assert SECRET not in recorded and SECRET not in repr(loop) and SECRET not in str(loop)
    assert loop["cfg"].reveal()["data_backend"] == uri  # rank 0 still gets it


def test_the_db_password_is_redacted_in_error_messages(tiny_model_dir, artifact_store):
    from superduper_transformers.launch.ray_settings import RayConfigError, check_ray_configs

    uri = f"mongomock://trainer:{SECRET}@localhost/test"
    db = types.SimpleNamespace(
        cfg=types.SimpleNamespace(data_backend=uri, artifact_store=f"filesystem://{artifact_store}")
    )
    with pytest.raises(RayConfigError, match=r"mongomock://trainer:\*\*\*@localhost/test") as e:
        check_ray_configs({"scaling_config": {"num_workers": 1}}, db)
    assert SECRET not in str(e.value)


def test_a_planted_secret_is_nowhere_after_a_training(tiny_model_dir, artifact_store, tmp_path):
    from loguru import logger
    from superduper import superduper

    lines = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        db = superduper(f"mongomock://trainer:{SECRET}@localhost/sec", force_apply=True)
        fixtures.insert_rows(db)
        llm = fixtures.make_llm(
            db, tiny_model_dir, max_steps=10, save_steps=10, eval_steps=10, output_dir=str(tmp_path / "out")
        )
        db.apply(llm, force=True)
        db.load("LLM", "tiny").predict("1+1=")
    finally:
        logger.remove(sink)
    for table in ("LLM", "LLMTrainer", "TrainingRun", "Checkpoint"):
        rows = [dict(r) for r in db[table].execute()]
        assert rows and SECRET not in json.dumps(rows, default=str), table
    for root, _, files in os.walk(artifact_store):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert SECRET.encode() not in f.read(), name
    assert lines and not [line for line in lines if SECRET in line]
