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
    from superduper_transformers import ImportedMetric
    from superduper_transformers.checkpoint import Checkpoint
    from superduper_transformers.promote import Promotions
    from superduper_transformers.resume import TrainingRun
    from superduper_transformers.store.identity import DatabaseIdentity

    for cls in (LLM, LLMTrainer, Checkpoint, TrainingRun, Promotions, ImportedMetric, DatabaseIdentity):
        for name, datatype in cls.class_schema.fields.items():
            kind = str(datatype).lower()
            if (cls, name) == (LLMTrainer, "transform"):  # superduper's Trainer field: refused
                continue
            assert "dill" not in kind and "pickle" not in kind, (cls.__name__, name, kind)
    with pytest.raises(ConfigError, match="`transform` is not used by LLMTrainer"):
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), transform=len)


def _validation(db, metric=None, dataset=None, identifier="v"):
    from superduper.components.dataset import Dataset
    from superduper.components.model import Validation

    from superduper_transformers import ImportedMetric

    fixtures.insert_rows(db, table="heldout", facts=[], valid=fixtures.FACTS[:2])
    return Validation(
        identifier,
        key=("x", "y"),
        metrics=[metric or ImportedMetric("exact", function="plugin_tests.fixtures:exact_match")],
        datasets=[dataset or Dataset("heldout", select=db["heldout"].select())],
    )


@pytest.mark.parametrize("child", ["metric", "dataset"])
def test_a_validation_stored_as_a_pickle_is_refused_naming_the_field(db, tiny_model_dir, child):
    from superduper.components.dataset import Dataset
    from superduper.components.metric import Metric

    from superduper_transformers.store.pickled import PickledFieldError

    if child == "metric":
        validation = _validation(db, metric=Metric("exact", object=fixtures.exact_match))
        where = r"`validation.metrics\[0\]` \(Metric `exact`\): field `object`"
    else:
        validation = _validation(db, dataset=Dataset("rows", raw_data=[{"x": "1+1=", "y": "2"}], pin=True))
        where = r"`validation.datasets\[0\]` \(Dataset `rows`\): field `raw_data`"
    message = where + r" would be stored as a pickled blob .* Give metrics as `ImportedMetric\("
    with pytest.raises(PickledFieldError, match=message):  # given to the constructor
        LLM("tiny", model_name_or_path=tiny_model_dir, validation=validation)
    llm = LLM("tiny", model_name_or_path=tiny_model_dir)
    llm.validation = validation  # set afterwards: refused by the apply, before it writes
    with pytest.raises(PickledFieldError, match=message):
        db.apply(llm, force=True)
    assert "LLM" not in db.show() and "Validation" not in db.show()


def test_a_stored_pickled_metric_is_never_unpickled(
    db, tiny_model_dir, artifact_store, tmp_path, monkeypatch
):
    # A database written before the refusal holds a Metric's function as a dill blob in
    # the store; a writer of the store replaces it with a pickle that runs code.
    import pickle

    from superduper.components.metric import Metric

    with monkeypatch.context() as m:  # as an earlier version stored it
        m.setattr(LLM, "refuse_pickled_children", lambda self, db=None: None)
        m.setattr(LLM, "_drop_pickled_children", lambda self: None)
        llm = LLM("tiny", model_name_or_path=tiny_model_dir)
        llm.validation = _validation(db, metric=Metric("exact", object=fixtures.exact_match))
        db.apply(llm, force=True)
    marker = tmp_path / "code-ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blobs = [e.path for e in os.scandir(artifact_store) if e.is_file()]
    assert blobs  # the Metric's function
    for blob in blobs:
        with open(blob, "wb") as f:
            f.write(pickle.dumps(Planted()))

    stored = db.load("LLM", "tiny")
    stored.setup()
    assert not marker.exists()
    assert stored.validation is None  # left out of this copy, with a warning
    # Applying it again with a metric by import path replaces it; still nothing ran. (A
    # new identifier: superduper itself sets up, so unpickles, the stored `Validation`
    # "v" when one of that identifier is applied again.)
    llm = LLM("tiny", model_name_or_path=tiny_model_dir, predict_kwargs={"max_new_tokens": 2})
    llm.validation = _validation(db, identifier="v2")
    db.apply(llm, force=True)
    (key,) = [k for k in db.load("LLM", "tiny").metric_values if k.startswith("heldout/")]
    assert not marker.exists()


def test_metrics_are_stored_as_import_paths(db, tiny_model_dir):
    from superduper_transformers import ImportedMetric
    from superduper_transformers.metric import MetricError

    metric = ImportedMetric("exact", function=fixtures.exact_match, kwargs={"unused": None})
    assert metric.function == "plugin_tests.fixtures:exact_match"  # an importable function: its path
    with pytest.raises(MetricError, match=r"`function`=.*lambda.* cannot be imported again"):
        ImportedMetric("m", function=lambda p, t: 0)
    with pytest.raises(MetricError, match=r"`function`='exact' is not an import path"):
        ImportedMetric("m", function="exact")
    with pytest.raises(MetricError, match=r"`kwargs`=.* must be plain JSON"):
        ImportedMetric("m", function="pkg.mod:f", kwargs={"f": len})
    llm = LLM("tiny", model_name_or_path=tiny_model_dir)
    llm.validation = _validation(db, metric=ImportedMetric("m", function="plugin_tests.no_such:f"))
    with pytest.raises(
        MetricError, match=r"ImportedMetric `m`: cannot import `function`='plugin_tests.no_such:f'"
    ):
        db.apply(llm, force=True)
    assert "LLM" not in db.show()


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


# -- 3. the bytes verified are the bytes loaded ---------------------------------------


def _adapter(model_dir: str, folder: str, seed: int) -> str:
    """A LoRA adapter of the tiny model with random (non-zero) weights, saved to ``folder``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(r=4, target_modules=["q_proj"])
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    model.save_pretrained(folder)
    return folder


def _lora_weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_the_files_loaded_are_the_files_verified(db, tiny_model_dir, tmp_path, monkeypatch):
    # Between the check of the stored folder and the load, another local user swaps it
    # (its parent is 0o777): what is loaded must still be what was verified.
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from superduper_transformers import checkpoint as ckpts

    good = ckpts.register_checkpoint(
        db,
        model="tiny",
        experiment_id="run1",
        path=_adapter(tiny_model_dir, str(tmp_path / "good"), 0),
        step=1,
    )
    evil = _adapter(tiny_model_dir, str(tmp_path / "evil"), 1)
    expected = _lora_weights(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), evil)
    )
    db.apply(LLM("tiny", model_name_or_path=tiny_model_dir, adapter_id=good), force=True)
    llm = db.load("LLM", "tiny")
    stored = good.local_path
    verify = ckpts.verify_directory

    def verify_then_swap(directory, manifest, identifier):
        verify(directory, manifest, identifier)
        if os.path.isdir(stored + ".verified"):
            return
        os.rename(stored, stored + ".verified")  # the swap: the stored folder is replaced
        shutil.copytree(evil, stored)

    monkeypatch.setattr(ckpts, "verify_directory", verify_then_swap)
    model, _ = llm._load()
    loaded = _lora_weights(model)
    assert os.path.isdir(stored + ".verified")  # the swap happened after a verification
    assert loaded.keys() == expected.keys()
    assert not any(torch.equal(loaded[k], expected[k]) for k in loaded)  # not the swapped-in weights
    monkeypatch.undo()
    shutil.rmtree(stored)
    os.rename(stored + ".verified", stored)
    want = _lora_weights(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), stored)
    )
    assert all(torch.equal(loaded[k], want[k]) for k in want)  # the verified ones
