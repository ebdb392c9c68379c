"""Every setting is checked before anything is written: the message names the setting,
the value and the fix, and the database holds no row of the model afterwards.

The cases here are the table "Bad inputs tried" in docs/guarantees.md.
"""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers import LLM
from superduper_transformers.checkpoint import list_checkpoints
from superduper_transformers.hf.data import DataError
from superduper_transformers.trainer_args import ConfigError


def _nothing_written(db, identifier="tiny"):
    shown = db.show()
    assert "LLM" not in shown and "LLMTrainer" not in shown and "TrainingRun" not in shown, shown
    assert list_checkpoints(db, identifier) == []


def _only_train_rows(db, name="trainonly"):
    from superduper import Table

    db.apply(Table(name, fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db[name].insert([{"x": p, "y": c, "_fold": "train"} for p, c in fixtures.FACTS])
    return name


# Settings refused when the LLMTrainer / LLM is built.
AT_CONSTRUCTION = [
    (dict(learning_rate="abc"), r"`learning_rate` must be a number > 0 \(e.g. 2e-4\), got 'abc'"),
    (dict(max_steps=0), r"`max_steps` must be a positive integer \(or -1 .*got 0"),
    (dict(per_device_train_batch_size=0), r"`per_device_train_batch_size` must be an integer >= 1 .*got 0"),
    (dict(save_steps=-5), r"`save_steps` must be a number > 0 .*got -5"),
    (
        dict(gradient_accumulation_steps=1.5),
        r"`gradient_accumulation_steps` must be an integer >= 1 .*got 1.5",
    ),
    (dict(lora_dropout="x"), r"`lora_dropout` must be a number in \[0, 1\) \(e.g. 0.05\), got 'x'"),
    (dict(key=""), r"`key` must be a column name .* got ''"),
    (dict(key=("x", "")), r"`key` must be a column name .* got \('x', ''\)"),
    (dict(bf16=True, fp16=True), r"`bf16=True` and `fp16=True` were both given"),
]


@pytest.mark.parametrize("settings,message", AT_CONSTRUCTION)
def test_bad_settings_are_refused_when_built(db, tiny_model_dir, settings, message):
    with pytest.raises(ConfigError, match=message):
        fixtures.make_llm(db, tiny_model_dir, **settings)
    _nothing_written(db)


def test_a_prompt_template_with_another_placeholder(db, tiny_model_dir):
    with pytest.raises(
        ValueError,
        match=r"`prompt_template`='\{input\} \{x\}' cannot be filled with only `\{input\}` \(KeyError: 'x'\)",
    ):
        LLM("tiny", model_name_or_path=tiny_model_dir, prompt_template="{input} {x}")
    _nothing_written(db)


# Settings that depend on the database (its rows, its tables) or that only transformers /
# trl can judge: refused by the preflight of `db.apply`, before it writes.
AT_APPLY = [
    (dict(eval_strategy="sometimes"), ConfigError, r"transformers/trl refused them: .*sometimes"),
    (
        dict(load_best_model_at_end=True, eval_strategy="steps", save_strategy="epoch"),
        ConfigError,
        r"`load_best_model_at_end=True` needs a checkpoint at every evaluation, but `save_strategy`='epoch' "
        r"and `eval_strategy`='steps' differ: set both to 'steps'",
    ),
    (
        dict(metric_for_best_model="accuracy"),
        ConfigError,
        r"`metric_for_best_model`='accuracy' is a metric no evaluation produces: the eval sets \['valid'\] produce \['loss'\]",
    ),
    (
        dict(table="trainonly", eval_strategy="steps"),
        ConfigError,
        r"`eval_strategy`='steps' needs evaluation data, and there is none: insert rows with `_fold='valid'`",
    ),
    (
        dict(table="trainonly", eval_strategy="no", load_best_model_at_end=True),
        ConfigError,
        r"`load_best_model_at_end=True` needs evaluation data",
    ),
    (
        dict(table="no_such_table"),
        DataError,
        r"`select` reads the table `no_such_table`, which is not in the database .*db.apply\(Table",
    ),
]


@pytest.mark.parametrize("settings,error,message", AT_APPLY)
def test_bad_settings_are_refused_before_the_apply_writes(db, tiny_model_dir, settings, error, message):
    _only_train_rows(db)
    llm = fixtures.make_llm(db, tiny_model_dir, **settings)
    with pytest.raises(error, match=message):
        db.apply(llm, force=True)
    _nothing_written(db)


def test_a_lora_module_name_that_matches_nothing_is_refused_before_writing(db, tiny_model_dir, tmp_path):
    from superduper_transformers.trainer_args import ConfigError

    llm = fixtures.make_llm(
        db, tiny_model_dir, lora_target_modules=["q_proj", "v_projj"], output_dir=str(tmp_path / "out")
    )
    with pytest.raises(
        ConfigError, match=r"`lora_target_modules` names \['v_projj'\], which match no module.*'v_proj'"
    ):
        db.apply(llm, force=True)
    assert "tiny" not in db.show("LLM")
    # real names (and peft's "all-linear") pass the check
    ok = fixtures.make_llm(
        db,
        tiny_model_dir,
        lora_target_modules=["q_proj", "v_proj"],
        max_steps=1,
        save_steps=1,
        eval_steps=1,
        output_dir=str(tmp_path / "out"),
    )
    db.apply(ok, force=True)
    assert "tiny" in db.show("LLM")
