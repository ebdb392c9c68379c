"""Preference, feedback and reward objectives (DPO, KTO, ORPO, GRPO) on the tiny model.

The learning tests train on made-up tasks with a rule (``preference_tasks``) and measure
on held-out rows. Each trains for a few dozen steps (a few seconds on a CPU).
"""

from __future__ import annotations

import os

import pytest
import torch

from plugin_tests import fixtures
from plugin_tests import preference_tasks as tasks
from superduper_transformers.checkpoint import list_checkpoints

TRAIN, HELD_OUT = tasks.pairs(64, seed=1), tasks.pairs(32, seed=2)
REWARDS = "plugin_tests.preference_tasks"

FIELDS = {
    "dpo": {"prompt": "str", "chosen": "str", "rejected": "str"},
    "orpo": {"prompt": "str", "chosen": "str", "rejected": "str"},
    "kto": {"prompt": "str", "completion": "str", "label": "bool"},
    "grpo": {"prompt": "str", "answer": "str"},
}


#: The metrics each objective's checkpoints carry (trl's names).
METRICS = {
    "dpo": {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"},
    "kto": {"rewards/chosen", "rewards/rejected", "rewards/margins", "kl"},
    "orpo": {"rewards/chosen", "rewards/rejected", "rewards/margins", "log_odds_ratio", "nll_loss"},
    "grpo": {"reward", "reward_std", "rewards/digit_share/mean"},
}
#: GRPO's settings when a test only needs it to train (one reward function, short samples).
GRPO = dict(reward_funcs=[f"{REWARDS}:digit_share"], num_generations=4, max_completion_length=4)


def _rows(objective):
    if objective in ("dpo", "orpo"):
        return [dict(prompt=p, chosen=c, rejected=r) for p, c, r in TRAIN]
    if objective == "kto":
        return [dict(prompt=p, completion=c, label=b) for p, c, b in tasks.thumbs(128, seed=1)]
    return [dict(prompt=p, answer="7") for p in tasks.prompts(64, seed=1)]


def _table(db, objective, rows=None, name="rows"):
    from superduper import Table

    db.apply(Table(name, fields={**FIELDS[objective], "_fold": "str"}), force=True)
    db[name].insert([{**r, "_fold": "train"} for r in (rows if rows is not None else _rows(objective))])


def _llm(db, model_dir, tmp_path, objective, identifier="m", table="rows", trainer_name=None, **kwargs):
    from superduper_transformers import LLM, LLMTrainer

    key = {"kto": ("prompt", "completion", "label"), "grpo": ("prompt", "answer")}.get(
        objective, ("prompt", "chosen", "rejected")
    )
    settings = {
        **fixtures.FAST_TRAINING,
        "logging_steps": 10,
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "lora_modules_to_save": ["lm_head"],
        "output_dir": str(tmp_path / "out" / identifier),
        **kwargs,
    }
    settings.setdefault("save_steps", settings.get("max_steps", 500))
    trainer = LLMTrainer(
        f"{identifier}-trainer", objective=objective, key=key, select=db[table].select(), **settings
    )
    return LLM(identifier, model_name_or_path=model_dir, trainer=trainer)


def _last_metrics(db, identifier="m"):
    rows = list_checkpoints(db, identifier)
    assert rows, "no checkpoint registered"
    return rows[-1]["metrics"]


# -- learning -------------------------------------------------------------------
@pytest.mark.parametrize("objective, steps", [("dpo", 30), ("kto", 30), ("orpo", 40)])
def test_preferences_generalise_to_held_out_pairs(db, tiny_model_dir, tmp_path, objective, steps):
    """The chosen answers follow a rule (digits after a prompt starting with `d`, letters
    after `l`): on pairs never trained on, the model comes to prefer the chosen answer."""
    _table(db, objective)
    llm = _llm(db, tiny_model_dir, tmp_path, objective, max_steps=steps, beta=0.5)
    before = tasks.preferred(llm, HELD_OUT)
    db.apply(llm, force=True)

    trained = db.load("LLM", "m")
    after = tasks.preferred(trained, HELD_OUT)
    print(f"{objective}: held-out pairs preferred {before:.2f} -> {after:.2f}")
    assert before <= 0.7 and after >= 0.9, (before, after)
    assert METRICS[objective] <= set(_last_metrics(db)), sorted(_last_metrics(db))
    if objective == "dpo":  # and the greedy answers to held-out prompts follow the rule
        outs = trained.predict_batches([p for p, _, _ in HELD_OUT], max_new_tokens=3)
        kinds = [o[:1].isdigit() if p[0] == "d" else o[:1].isalpha() for o, (p, _, _) in zip(outs, HELD_OUT)]
        print(f"dpo: greedy answers of the chosen kind {sum(kinds) / len(kinds):.2f}")
        assert sum(kinds) / len(kinds) >= 0.9, list(zip(HELD_OUT, outs))


def test_grpo_raises_the_mean_reward_on_held_out_prompts(db, tiny_model_dir, tmp_path):
    """Reward: the share of digits in a completion. A second reward function reads the
    row's `answer` column and its own JSON keyword argument."""
    _table(db, "grpo")
    llm = _llm(
        db,
        tiny_model_dir,
        tmp_path,
        "grpo",
        max_steps=30,
        reward_funcs=[
            f"{REWARDS}:digit_share",
            {"function": f"{REWARDS}:matches_answer", "kwargs": {"weight": 0.5}},
        ],
        num_generations=4,
        max_completion_length=6,
    )
    held_out = tasks.prompts(16, seed=2)
    before = tasks.mean_reward(llm, held_out)
    db.apply(llm, force=True)

    after = tasks.mean_reward(db.load("LLM", "m"), held_out)
    print(f"grpo: mean reward on held-out prompts {before:.2f} -> {after:.2f}")
    assert after >= before + 0.25, (before, after)
    metrics = _last_metrics(db)
    assert {"reward", "reward_std", "rewards/digit_share/mean", "rewards/matches_answer/mean"} <= set(metrics)


# -- every objective in every training mode ------------------------------------------
MODES = {"qlora": dict(bits=4), "full": dict(use_lora=False, lora_modules_to_save=None)}


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("objective", ["dpo", "kto", "orpo", "grpo"])
def test_each_objective_trains_with_qlora_and_full_fine_tuning(db, tiny_model_dir, tmp_path, objective, mode):
    """A few steps each (LoRA: the learning tests above): the checkpoint row carries the
    objective's metrics, and the stored model predicts with exactly the weights trained:
    all of them (full), or the adapter on the 4-bit base it was trained on (QLoRA)."""
    from safetensors.torch import load_file

    _table(db, objective, _rows(objective)[:16])
    extra = GRPO if objective == "grpo" else {}
    llm = _llm(db, tiny_model_dir, tmp_path, objective, max_steps=2, logging_steps=2, **extra, **MODES[mode])
    db.apply(llm, force=True)

    (row,) = list_checkpoints(db, "m")
    assert row["step"] == 2 and METRICS[objective] <= set(row["metrics"]), sorted(row["metrics"])
    stored = db.load("LLM", "m")
    assert stored.adapter_id.identifier == row["identifier"]
    folder = db.load("Checkpoint", row["identifier"]).local_path
    model, _ = stored._get_pipeline()
    if mode == "full":
        loaded = model.state_dict()
        saved, base = (
            load_file(f"{folder}/model.safetensors"),
            load_file(f"{tiny_model_dir}/model.safetensors"),
        )
        assert saved.keys() == base.keys() and not os.path.exists(f"{folder}/adapter_config.json")
        assert all(torch.equal(loaded[k], saved[k]) for k in saved)
        assert not all(torch.equal(saved[k], base[k]) for k in saved)  # trained, not the base
    else:
        from peft import get_peft_model_state_dict

        saved, live = _adapter(folder), get_peft_model_state_dict(model)
        assert model.base_model.model.is_loaded_in_4bit
        assert saved.keys() == live.keys() and all(
            torch.equal(live[k].to(saved[k].dtype), saved[k]) for k in saved
        )
    outs = stored.predict_batches(["dxy:", "lxy:"], max_new_tokens=3)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)


# -- what users do with a trained preference model -----------------------------------------
def test_a_dpo_model_has_its_history_plot_promotions_and_exports(db, tiny_model_dir, tmp_path):
    """History and plot carry DPO's metrics by step; an alias, a promotion and its
    rollback move between its checkpoints; the adapter and the merged export load with
    plain transformers/peft and give the stored model's logits."""
    import matplotlib.image
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from superduper_transformers import promote
    from superduper_transformers.export import export_model
    from superduper_transformers.history import metric_history
    from superduper_transformers.plot import plot_history

    _table(db, "dpo", _rows("dpo")[:16])
    llm = _llm(db, tiny_model_dir, tmp_path, "dpo", max_steps=4, save_steps=2, logging_steps=2, beta=0.5)
    db.apply(llm, force=True)
    assert [r["step"] for r in list_checkpoints(db, "m")] == [2, 4]

    history = metric_history(db, "m")
    for metric in METRICS["dpo"]:
        assert history.training(metric)[0] == [2, 4], metric
    data = plot_history(db, "m", str(tmp_path / "dpo.png"), width=400, panel_height=100)
    assert matplotlib.image.imread(data.path).shape[:2] == (100 * len(data.panels), 400)
    assert METRICS["dpo"] <= set(data.panels) and data.panels["rewards/margins"]["train"][0] == [2, 4]

    promote.promote(db, "m", 2, alias="prod")
    assert promote.load_model(db, "m", alias="prod").adapter_id.step == 2
    promote.promote(db, "m", 2)
    assert db.load("LLM", "m").adapter_id.step == 2
    promote.rollback(db, "m")
    stored = db.load("LLM", "m")
    assert stored.adapter_id.step == 4

    model, tokenizer = stored._get_pipeline()
    ids = tokenizer("dxy:", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        adapter = export_model(db, "m", str(tmp_path / "adapter"))
        assert "ref" not in os.listdir(adapter)  # trl's reference copy stays in the checkpoint
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
        merged = AutoModelForCausalLM.from_pretrained(
            export_model(db, "m", str(tmp_path / "merged"), merge=True)
        )
        for exported in (peft, merged):
            assert torch.allclose(exported(input_ids=ids).logits, expected, atol=1e-4)


def test_the_plot_of_each_objective_shows_its_metrics():
    from superduper_transformers.history import History
    from superduper_transformers.plot import history_panels

    entries = [{"step": s, "loss": 1.0, "reward": 0.5, "kl": 0.1, "rewards/margins": 0.2} for s in (5, 10)]
    panels = {o: set(history_panels(History("m", "run", entries, o))) for o in ("sft", "kto", "grpo")}
    assert panels == {"sft": {"loss"}, "kto": {"loss", "kl", "rewards/margins"}, "grpo": {"loss", "reward"}}


# -- from where the model stands ---------------------------------------------------
def _adapter(folder):
    """The tensors of a saved adapter, by name."""
    from safetensors.torch import load_file

    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def test_dpo_after_sft_starts_from_the_checkpoint_in_use_and_resumes_from_it(
    db, tiny_model_dir, tmp_path, monkeypatch
):
    """SFT teaches every `q...:` prompt the answer 777; DPO then trains the same LLM (a
    freshly built one, as a config file would give): it goes on from the SFT adapter, its
    reference is that adapter (so the SFT answers stay), and its run and checkpoints say so.
    Interrupted at step 30 and applied again, it resumes its run from the same start."""
    from superduper import Table

    sft_prompts = tasks.prompts(16, seed=3)
    db.apply(Table("sft", fields={"x": "str", "y": "str", "_fold": "str"}), force=True)
    db["sft"].insert([{"x": p, "y": "777", "_fold": "train"} for p in sft_prompts])
    sft = fixtures.make_llm(
        db,
        tiny_model_dir,
        "m",
        "sft",
        max_steps=30,
        save_steps=30,
        eval_strategy="no",
        lora_modules_to_save=["lm_head"],
    )
    db.apply(sft, force=True)
    start = list_checkpoints(db, "m")[-1]
    assert fixtures.answers(db.load("LLM", "m"), [(p, "777") for p in sft_prompts]) == ["777"] * 16

    _table(db, "dpo")
    dpo = _llm(db, tiny_model_dir, tmp_path, "dpo", max_steps=50, save_steps=25, beta=0.5)
    assert dpo.adapter_id is None  # the stored model's checkpoint in use is the start
    fixtures.interrupt_at(monkeypatch, 30)
    with pytest.raises(Exception, match="interrupted at step 30"):
        db.apply(dpo, force=True)
    monkeypatch.undo()
    assert db.load("LLM", "m").adapter_id.step == 25  # the interrupted DPO run's checkpoint in use
    db.apply(_llm(db, tiny_model_dir, tmp_path, "dpo", max_steps=50, save_steps=25, beta=0.5), force=True)

    trained = db.load("LLM", "m")
    rows = [r for r in list_checkpoints(db, "m") if r["experiment_id"] != start["experiment_id"]]
    assert trained.adapter_id.identifier == rows[-1]["identifier"]
    fingerprints = [db.load("Checkpoint", r["identifier"]).data_fingerprint for r in rows]
    assert {f.get("start_checkpoint") for f in fingerprints} == {start["identifier"]}
    assert [r["step"] for r in rows] == [25, 50] and len({r["experiment_id"] for r in rows}) == 1
    run = db.load("TrainingRun", f"m-run-{rows[-1]['experiment_id']}")
    assert run.settings["start_from"] == start["identifier"] and run.settings["objective"] == "dpo"
    assert [r["step"] for r in run.resumes] == [25] and run.state == "finished"
    preferred = tasks.preferred(trained, HELD_OUT)
    print(f"sft -> dpo: held-out pairs preferred {preferred:.2f}")
    assert preferred >= 0.9
    # The reference is the starting point: trl's frozen copy of the adapter (saved beside it
    # in `ref/`) is the SFT adapter, tensor for tensor; and the policy went on from it: its
    # LoRA B matrices (zero in a new adapter) kept much of the SFT ones: trained from zero,
    # the distance to them would be |B(dpo)| or more (0.63-0.66 measured on both CPU kinds).
    sft_w = _adapter(db.load("Checkpoint", start["identifier"]).local_path)
    first = db.load("Checkpoint", rows[0]["identifier"]).local_path
    ref_w = _adapter(os.path.join(first, "ref"))
    assert sft_w.keys() == ref_w.keys() and all(torch.equal(sft_w[k], ref_w[k]) for k in sft_w)
    dpo_w = _adapter(first)
    b = [k for k in sft_w if "lora_B" in k]
    near = sum(float((dpo_w[k] - sft_w[k]).norm()) for k in b) / sum(float(dpo_w[k].norm()) for k in b)
    print(f"sft -> dpo: |B(dpo) - B(sft)| / |B(dpo)| = {near:.2f}")
    assert near < 0.9


def test_dpo_loss_variants_pass_through_to_trl(db, tiny_model_dir, tmp_path):
    _table(db, "dpo", _rows("dpo")[:8])
    db.apply(_llm(db, tiny_model_dir, tmp_path, "dpo", max_steps=2, loss_type=["ipo"]), force=True)
    job = next(j for j in db["Job"].execute() if j["method"] == "fit_in_db" and j["identifier"] == "m")
    assert job["kwargs"]["plan"]["config_kwargs"]["loss_type"] == ["ipo"]
    assert [r["step"] for r in list_checkpoints(db, "m")] == [2]


# -- bad inputs, refused before anything is written -----------------------------------
def _refused(db, llm, match):
    with pytest.raises(ValueError, match=match):
        db.apply(llm, force=True)
    assert "m" not in db.show("LLM")


def test_a_label_that_is_not_a_boolean_is_refused_naming_the_row(db, tiny_model_dir, tmp_path):
    from superduper import Table

    db.apply(
        Table("rows", fields={"prompt": "str", "completion": "str", "label": "int", "_fold": "str"}),
        force=True,
    )
    db["rows"].insert(
        [{"prompt": "dxy:", "completion": "123", "label": True, "_fold": "train"}]
        + [{"prompt": "lxy:", "completion": "123", "label": 0, "_fold": "train"}]
    )
    llm = _llm(db, tiny_model_dir, tmp_path, "kto", max_steps=2)
    _refused(
        db, llm, r"Key `label` of row 1 of the training rows holds 0 \(int\); a KTO label must be a boolean"
    )


def test_a_missing_column_is_refused_naming_it(db, tiny_model_dir, tmp_path):
    _table(db, "kto", [{"prompt": "dxy:", "completion": "123"}])
    _refused(db, _llm(db, tiny_model_dir, tmp_path, "kto", max_steps=2), r"Key `label` is missing from row 0")


@pytest.mark.parametrize(
    "reward, match",
    [
        ("nope:digits", r"cannot import 'nope:digits' \(ModuleNotFoundError"),
        (f"{REWARDS}:NOT_A_FUNCTION", r"'plugin_tests.preference_tasks:NOT_A_FUNCTION' is 3, not a function"),
        (f"{REWARDS}:wrong_count", r"wrong_count' returned 1 values for 2 completions: it must return"),
        (f"{REWARDS}:raises", r"raises' raised KeyError: 'answer' when called on 2 rows .*`answer`"),
    ],
)
def test_a_reward_function_that_cannot_serve_is_refused_before_writing(
    db, tiny_model_dir, tmp_path, reward, match
):
    _table(db, "grpo")
    llm = _llm(db, tiny_model_dir, tmp_path, "grpo", max_steps=2, reward_funcs=[reward], num_generations=2)
    _refused(db, llm, match)


def test_reward_settings_are_refused_at_construction(db):
    from superduper_transformers import LLMTrainer
    from superduper_transformers.trainer_args import ConfigError

    select = db["facts"].select()
    with pytest.raises(ConfigError, match=r"`objective='grpo'` needs `reward_funcs`"):
        LLMTrainer("t", objective="grpo", key="x", select=select)
    with pytest.raises(ConfigError, match=r"`reward_funcs` are read by the `grpo` objective only.*`dpo`"):
        LLMTrainer(
            "t", objective="dpo", key=("p", "c", "r"), select=select, reward_funcs=[f"{REWARDS}:digit_share"]
        )
    with pytest.raises(ConfigError, match=r"`reward_funcs\[0\]`: .* inside a function"):
        LLMTrainer(
            "t", objective="grpo", key="x", select=select, reward_funcs=[lambda prompts, completions: []]
        )
    with pytest.raises(ConfigError, match=r"KTO estimates its KL term .* at least 2"):
        LLMTrainer("t", objective="kto", key=("p", "c", "l"), select=select, per_device_train_batch_size=1)
    trainer = LLMTrainer("t", objective="grpo", key="x", select=select, reward_funcs=tasks.digit_share)
    assert trainer.reward_funcs == [{"function": f"{REWARDS}:digit_share", "kwargs": {}}]


# -- the command line -------------------------------------------------------------
def test_each_example_config_passes_its_checks(tiny_model_dir, tmp_path):
    from superduper_transformers.cli.train import _check

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for objective in ("dpo", "kto", "orpo", "grpo"):
        path = os.path.join(root, "examples", f"tiny_{objective}.yaml")
        _, llm = _check(path, [f"model.model_name_or_path={tiny_model_dir}"], str(tmp_path))
        assert llm.trainer.objective == objective


def test_the_command_line_imports_thumbs_and_checks_a_kto_config(
    tmp_path, artifact_store, tiny_model_dir, capsys
):
    """The labels arrive as a bool column and pass the preflight (`train --check`: the
    rows are read from SQLite and checked as a training would)."""
    from superduper_transformers import cli

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data = tmp_path / "data"
    data.mkdir()
    thumbs = os.path.join(root, "examples", "data", "thumbs.jsonl")
    assert cli.main(["--data", str(data), "import-data", thumbs, "--table", "thumbs"]) == 0
    assert "128 rows into `thumbs` (128 train, 0 valid)" in capsys.readouterr().out

    config = os.path.join(root, "examples", "tiny_kto.yaml")
    model = f"model.model_name_or_path={tiny_model_dir}"
    assert cli.main(["--data", str(data), "train", config, model, "--check"]) == 0
    assert "the config and the data are fine: 128 training rows" in capsys.readouterr().out
    from superduper_transformers.cli.common import connect

    class Args:
        uri, artifact_store = None, None

    Args.data = str(data)
    assert connect(Args).load("Table", "thumbs").fields["label"] == "bool"

    (tmp_path / "bad.yaml").write_text(open(config).read().replace("objective: kto", "objective: sft"))
    assert cli.main(["--data", str(data), "train", str(tmp_path / "bad.yaml"), model]) == 2
    err = capsys.readouterr().err
    assert "`trainer.beta` is a setting of the `dpo` objective, and `trainer.objective` is `sft`" in err


def test_the_best_checkpoint_is_ranked_by_the_objectives_metrics(db, tiny_model_dir, tmp_path):
    from superduper_transformers.plan import build_plan
    from superduper_transformers.trainer_args import ConfigError

    rows = _rows("dpo")[:8]
    _table(db, "dpo", rows)
    db["rows"].insert([{**r, "_fold": "valid"} for r in rows[:4]])
    llm = _llm(
        db, tiny_model_dir, tmp_path, "dpo", eval_strategy="steps", metric_for_best_model="rewards/accuracies"
    )
    plan = build_plan(llm, db)
    assert (plan.best_metric, plan.greater_is_better) == ("eval_rewards/accuracies", True)
    llm = _llm(db, tiny_model_dir, tmp_path, "dpo", eval_strategy="steps", metric_for_best_model="reward")
    with pytest.raises(
        ConfigError, match=r"`metric_for_best_model`='reward' is a metric no evaluation produces"
    ):
        build_plan(llm, db)

    _table(db, "grpo", name="prompts")
    db["prompts"].insert([{"prompt": "qabc:", "answer": "7", "_fold": "valid"}] * 4)
    llm = _llm(
        db,
        tiny_model_dir,
        tmp_path,
        "grpo",
        table="prompts",
        eval_strategy="steps",
        per_device_eval_batch_size=8,
        reward_funcs=[f"{REWARDS}:digit_share"],
        num_generations=4,
    )
    plan = build_plan(llm, db)
    assert (plan.best_metric, plan.greater_is_better) == ("eval_reward", True)


def test_dpo_conversations_are_rendered_as_predict_sees_them(tiny_model_dir):
    from transformers import AutoTokenizer

    from superduper_transformers.hf.data import DataError, build_prompt
    from superduper_transformers.hf.objectives import get

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    dpo, columns = get("dpo"), ["prompt", "chosen", "rejected"]
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "4"}], "rejected": "four"}
    dpo.check_rows([row], columns, "training rows")
    (example,) = dpo.build_dataset(tokenizer, [row], columns, {"prompt_template": "{input}"}, "x")
    assert example["prompt"] == build_prompt(tokenizer, prompt)  # what `predict(messages)` feeds the model
    assert (example["chosen"], example["rejected"]) == ("4<|im_end|>\n", "four<|im_end|>\n")
    # text rows with `setup_chat_format` are wrapped the same way
    (example,) = dpo.build_dataset(
        tokenizer, [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}], columns, {"chat_format": True}, "x"
    )
    assert example["prompt"] == build_prompt(tokenizer, "2+2?", chat_format=True)
    assert example["chosen"] == "4<|im_end|>\n"

    bad = {**row, "chosen": [{"role": "assistant", "content": "4"}, {"role": "user", "content": "ok?"}]}
    with pytest.raises(DataError, match=r"Key `chosen` of row 0 .* not the assistant's"):
        dpo.check_rows([bad], columns, "training rows")
