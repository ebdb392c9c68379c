"""The training plan: built once per apply, handed to `fit` in its job; the objective seam."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers.checkpoint import list_checkpoints

#: Preference pairs over the facts: the right sum is chosen, a wrong one rejected.
PAIRS = [(p, c, str(int(c) + 1)) for p, c in fixtures.FACTS]


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_one_apply_plans_once_builds_one_trl_config_and_scans_each_row_once(
    db, tiny_model_dir, monkeypatch, tmp_path
):
    from superduper_transformers import plan as plan_module
    from superduper_transformers import trainer, trainer_args
    from superduper_transformers.store.rows import FoldRows

    plans = _count_calls(monkeypatch, trainer, "build_plan")
    configs = _count_calls(monkeypatch, trainer_args, "make_config")
    scans = _count_calls(monkeypatch, plan_module, "scan")
    pages = []
    original_pages = FoldRows.pages

    def counted_pages(self):
        for page in original_pages(self):
            pages.append(len(page))
            yield page

    monkeypatch.setattr(FoldRows, "pages", counted_pages)
    monkeypatch.setenv("SD_TRANSFORMERS_DATA_CACHE", str(tmp_path / "cache"))  # tokenized here
    llm = fixtures.make_llm(db, tiny_model_dir, max_steps=4, save_steps=2, eval_steps=2)
    db.apply(llm, force=True)

    assert len(plans) == 1
    assert len(configs) == 1  # the plan's config is the one that trains
    assert len(scans) == 2  # the train and valid sets, once each
    train, valid = len(fixtures.FACTS), len(fixtures.VALID)
    # Each row read twice: the plan's scan (check + hash), then tokenization.
    assert sum(pages) == 2 * (train + valid)
    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [2, 4]


def test_the_fit_job_row_records_the_plan(db, tiny_model_dir):
    llm = fixtures.make_llm(db, tiny_model_dir, max_steps=2, save_steps=2, eval_steps=2)
    db.apply(llm, force=True)
    jobs = [j for j in db["Job"].execute() if j["method"] == "fit_in_db" and j["identifier"] == "tiny"]
    assert len(jobs) == 1
    plan = jobs[0]["kwargs"]["plan"]
    assert plan["objective"] == "sft"
    assert plan["train"]["count"] == len(fixtures.FACTS)
    assert [e["name"] for e in plan["evals"]] == ["valid"]
    assert plan["best_metric"] == "eval_loss" and plan["greater_is_better"] is False
    assert plan["config_kwargs"]["max_steps"] == 2
    assert plan["fingerprint"]["train_rows"] == len(fixtures.FACTS)


def _preference_rows(db, table="prefs", pairs=PAIRS):
    from superduper import Table

    db.apply(
        Table(table, fields={"prompt": "str", "chosen": "str", "rejected": "str", "_fold": "str"}),
        force=True,
    )
    db[table].insert([{"prompt": p, "chosen": c, "rejected": r, "_fold": "train"} for p, c, r in pairs])


def _preferred(llm, pairs=PAIRS) -> float:
    """Share of pairs where the model gives the chosen answer the higher log-probability."""
    import torch

    model, tokenizer = llm._get_pipeline()
    wins = 0
    for prompt, chosen, rejected in pairs:
        scores = []
        for answer in (chosen, rejected):
            # A complete answer: trl's DPO scores the completion with its end-of-sequence token.
            ids = tokenizer(prompt + answer + tokenizer.eos_token, return_tensors="pt")["input_ids"]
            n = len(tokenizer(prompt)["input_ids"])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[n - 1 :].sum()
            scores.append(float(logp))
        wins += scores[0] > scores[1]
    return wins / len(pairs)


def test_a_second_objective_trains_through_the_same_pipeline(db, tiny_model_dir, tmp_path):
    """DPO: another trl trainer and other columns; launch, callback, checkpoints unchanged."""
    from superduper_transformers import LLM, LLMTrainer

    _preference_rows(db)
    settings = {**fixtures.FAST_TRAINING, "logging_steps": 10}
    trainer = LLMTrainer(
        "dpo-trainer",
        objective="dpo",
        key=("prompt", "chosen", "rejected"),
        select=db["prefs"].select(),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_modules_to_save=["lm_head"],
        max_steps=120,
        save_steps=60,
        beta=0.5,
        output_dir=str(tmp_path / "out"),
        **settings,
    )
    llm = LLM("pref", model_name_or_path=tiny_model_dir, trainer=trainer)
    before = _preferred(llm)
    db.apply(llm, force=True)

    rows = list_checkpoints(db, "pref")
    assert [r["step"] for r in rows] == [60, 120]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(
        rows[-1]["metrics"]
    )
    trained = db.load("LLM", "pref")
    assert trained.adapter_id.identifier == rows[-1]["identifier"]
    after = _preferred(trained)
    assert before < 0.8 and after >= 0.9, (before, after)


def test_a_keyword_of_another_objective_is_refused_naming_it(db):
    from superduper_transformers import LLMTrainer
    from superduper_transformers.trainer_args import ConfigError

    with pytest.raises(ConfigError, match=r"`beta` is a setting of the `dpo` objective.*objective is `sft`"):
        LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), beta=0.1)
    with pytest.raises(
        ConfigError, match=r"`packing` is a setting of the `sft` objective.*objective is `dpo`"
    ):
        LLMTrainer("t", objective="dpo", key=("p", "c", "r"), select=db["facts"].select(), packing=True)
    with pytest.raises(
        ConfigError, match=r"`objective` must be one of \['dpo', 'grpo', 'kto', 'orpo', 'sft'\], got 'ppo'"
    ):
        LLMTrainer("t", objective="ppo", key=("x", "y"), select=db["facts"].select())
    with pytest.raises(ConfigError, match=r"`key` of a `dpo` trainer must name three columns"):
        LLMTrainer("t", objective="dpo", key=("x", "y"), select=db["facts"].select())


def test_preference_rows_with_the_same_answers_are_refused_before_writing(db, tiny_model_dir, tmp_path):
    from superduper_transformers import LLM, LLMTrainer
    from superduper_transformers.hf.data import DataError

    _preference_rows(db, pairs=[*PAIRS[:3], ("1+1=", "2", "2")])
    trainer = LLMTrainer(
        "dpo-trainer",
        objective="dpo",
        key=("prompt", "chosen", "rejected"),
        select=db["prefs"].select(),
        max_steps=2,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(DataError, match=r"Row 3 of the training rows has the same `chosen` and `rejected`"):
        db.apply(LLM("pref", model_name_or_path=tiny_model_dir, trainer=trainer), force=True)
    assert "pref" not in db.show("LLM")
