"""Preference, feedback and reward objectives (DPO, KTO, ORPO, GRPO) on the tiny model.

The learning tests train on made-up tasks with a rule (``preference_tasks``) and measure
on held-out rows. Each trains for a few dozen steps (a few seconds on a CPU).
"""

from __future__ import annotations

import pytest

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
@pytest.mark.parametrize(
    "objective, steps, metrics",
    [
        ("dpo", 30, {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}),
        ("kto", 30, {"rewards/chosen", "rewards/rejected", "rewards/margins", "kl"}),
        ("orpo", 40, {"rewards/chosen", "rewards/rejected", "rewards/margins", "log_odds_ratio", "nll_loss"}),
    ],
)
def test_preferences_generalise_to_held_out_pairs(db, tiny_model_dir, tmp_path, objective, steps, metrics):
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
    assert metrics <= set(_last_metrics(db)), sorted(_last_metrics(db))
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


# -- from where the model stands ---------------------------------------------------
def test_dpo_after_sft_starts_from_the_checkpoint_in_use(db, tiny_model_dir, tmp_path):
    """SFT teaches every `q...:` prompt the answer 777; DPO then trains the same LLM (a
    freshly built one, as a config file would give): it goes on from the SFT adapter, its
    reference is that adapter (so the SFT answers stay), and its run and checkpoints say so."""
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
    dpo = _llm(db, tiny_model_dir, tmp_path, "dpo", max_steps=50, beta=0.5)
    assert dpo.adapter_id is None  # the stored model's checkpoint in use is the start
    db.apply(dpo, force=True)

    trained = db.load("LLM", "m")
    rows = [r for r in list_checkpoints(db, "m") if r["experiment_id"] != start["experiment_id"]]
    assert trained.adapter_id.identifier == rows[-1]["identifier"]
    fingerprints = [db.load("Checkpoint", r["identifier"]).data_fingerprint for r in rows]
    assert {f.get("start_checkpoint") for f in fingerprints} == {start["identifier"]}
    run = db.load("TrainingRun", f"m-run-{rows[-1]['experiment_id']}")
    assert run.settings["start_from"] == start["identifier"] and run.settings["objective"] == "dpo"
    preferred = tasks.preferred(trained, HELD_OUT)
    kept = sum(a.startswith("777") for a in trained.predict_batches(sft_prompts, max_new_tokens=3))
    print(f"sft -> dpo: held-out pairs preferred {preferred:.2f}, SFT answers kept {kept}/16")
    assert preferred >= 0.9
    assert kept >= 14  # from the base model, DPO would know nothing of 777
