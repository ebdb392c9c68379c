"""Bad input: a clear error naming the field, the value and the fix, before anything is written."""

from __future__ import annotations

import os
import shutil

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM, LLMTrainer
from superduper_transformers.checkpoint import CheckpointError, list_checkpoints
from superduper_transformers.hf.data import DataError
from superduper_transformers.hf.loading import ModelPathError
from superduper_transformers.trainer_args import ConfigError, UnknownKeywordError
from superduper_transformers.training import LLMCallback


def _nothing_written(db, identifier="tiny"):
    assert identifier not in db.show("LLM")
    assert list_checkpoints(db, identifier) == []


def _trainer(db, table="facts", **kwargs):
    return LLMTrainer("t", key=("x", "y"), select=db[table].select(), **kwargs)


def test_model_name_or_path_is_required(db):
    with pytest.raises(ValueError, match="`model_name_or_path` is required"):
        LLM("tiny", trainer=_trainer(db))


def test_missing_model_path_fails_before_apply_writes(db, tmp_path):
    missing = str(tmp_path / "no-such-model")
    llm = LLM("tiny", model_name_or_path=missing, trainer=_trainer(db))
    with pytest.raises(ModelPathError, match=r"`model_name_or_path`='.*no-such-model' does not exist"):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_uncached_hub_id_fails_offline_without_hub_trace(db):
    llm = LLM("tiny", model_name_or_path="nobody/no-such-model", trainer=_trainer(db))
    with pytest.raises(ModelPathError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_empty_training_selection(db, tiny_model_dir):
    from superduper import Table

    db.apply(Table("empty", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    llm = LLM("tiny", model_name_or_path=tiny_model_dir, trainer=_trainer(db, table="empty"))
    with pytest.raises(DataError, match="training rows are empty.*_fold='train'"):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_rows_without_fold_are_explained(db, tiny_model_dir):
    from superduper import Table

    db.apply(Table("nofold", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db["nofold"].insert([{"x": "1+1=", "y": "2", "_fold": "other"}])
    llm = LLM("tiny", model_name_or_path=tiny_model_dir, trainer=_trainer(db, table="nofold"))
    with pytest.raises(DataError, match="returns 1 rows, but none with `_fold='train'`"):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_key_missing_from_rows(db, tiny_model_dir):
    trainer = LLMTrainer("t", key=("x", "answer"), select=db["facts"].select())
    llm = LLM("tiny", model_name_or_path=tiny_model_dir, trainer=trainer)
    with pytest.raises(DataError, match=r"Key `answer` is missing from row 0 .*keys \['x', 'y'\]"):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_non_text_values(db, tiny_model_dir):
    from superduper import Table

    db.apply(Table("numbers", fields={"x": "str", "y": "int", "_fold": "str"}), force=True)
    db["numbers"].insert([{"x": "1+1=", "y": 2, "_fold": "train"}])
    llm = LLM("tiny", model_name_or_path=tiny_model_dir, trainer=_trainer(db, table="numbers"))
    with pytest.raises(DataError, match=r"Key `y` of row 0 .* holds a int .*needs text"):
        db.apply(llm, force=True)
    _nothing_written(db)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"bits": 3}, r"`bits` must be None \(no quantization\), 4 \(QLoRA NF4\) or 8, got 3"),
        ({"lora_r": 0}, "`lora_r` must be a positive integer, got 0"),
        ({"save_total_limit": 0}, "`save_total_limit` must be None .* or an integer >= 1, got 0"),
        ({"bits": 4, "use_lora": False}, "`bits=4` needs `use_lora=True`"),
        ({"lora_bias": "some"}, "`lora_bias` must be one of"),
        ({"training_kwargs": {"learnin_rate": 1}}, "`learnin_rate`.*Did you mean `learning_rate`"),
        ({"max_length": 10}, "set `max_seq_length` instead"),
        ({"key": "x", "ray_configs": {"num_workers": 2}}, "`ray_configs` needs a `scaling_config`"),
        ({"num_gpus": 2}, r"`num_gpus=2` without `ray_configs`: several GPUs train with Ray"),
        ({"num_gpus": -1}, "`num_gpus` must be None or an integer >= 0, got -1"),
    ],
)
def test_invalid_settings(db, kwargs, message):
    kwargs.setdefault("key", ("x", "y"))
    with pytest.raises(ConfigError, match=message):
        LLMTrainer("t", select=db["facts"].select(), **kwargs)


def test_every_problem_is_reported_at_once(db):
    with pytest.raises(ConfigError) as info:
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), bits=3, lora_r=-1)
    assert "`bits`" in str(info.value) and "`lora_r`" in str(info.value)


def test_unknown_trainer_keyword_suggests_the_closest(db):
    with pytest.raises(
        UnknownKeywordError, match="unexpected keyword argument `learnin_rate`.*Did you mean `learning_rate`"
    ):
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), learnin_rate=1e-3)


def test_training_keywords_are_accepted_directly(db):
    trainer = LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), learning_rate=1e-3, save_steps=7)
    assert trainer.training_kwargs == {"learning_rate": 1e-3, "save_steps": 7}


def test_callback_needs_a_database_or_a_config():
    with pytest.raises(ValueError, match="either `db` and `llm` .* or `cfg` and `identifier`"):
        LLMCallback()


def test_adapter_whose_artifact_is_missing(db, tiny_model_dir, artifact_store):
    llm = fixtures.make_llm(db, tiny_model_dir, max_steps=10, save_steps=10, eval_steps=10)
    db.apply(llm, force=True)
    ckpt_dir = db.load("Checkpoint", list_checkpoints(db, "tiny")[-1]["identifier"]).local_path
    shutil.rmtree(os.path.dirname(ckpt_dir))
    reloaded = db.load("LLM", "tiny")
    with pytest.raises(
        CheckpointError, match=r"Checkpoint `tiny-\w+-step10`: its files are missing from the artifact store"
    ):
        reloaded.predict("1+1=")


def test_adapter_path_that_does_not_exist(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="`adapter_id`=.* is not a folder"):
        LLM("tiny", model_name_or_path=tiny_model_dir, adapter_id=str(tmp_path / "nope"))


def test_num_gpus_zero_trains_on_the_cpu(db):
    from superduper_transformers.trainer_args import build_sft_config

    trainer = LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), num_gpus=0)
    args = build_sft_config(trainer, output_dir="/tmp/unused", has_eval=False)
    assert args.use_cpu and args.n_gpu == 0
