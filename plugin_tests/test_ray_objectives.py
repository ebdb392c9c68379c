"""A preference objective on the local Ray pool (its own file: the suite runs one file per
test process, and test_ray.py already holds the longest Ray trainings)."""

from __future__ import annotations

from plugin_tests import fixtures
from plugin_tests.test_ray import ray_configs, ray_tmp  # noqa: F401  (ray_tmp: a fixture)
from superduper_transformers.checkpoint import list_checkpoints


def test_dpo_trains_on_two_ray_workers_and_records_its_metrics(sqlite_db, tiny_model_dir, tmp_path, ray_tmp):  # noqa: F811
    """DPO rows are text (trl tokenizes them on each worker): the dataset travels in the job."""
    from superduper import Table

    from plugin_tests import preference_tasks as tasks
    from superduper_transformers import LLM, LLMTrainer

    db = sqlite_db
    db.apply(
        Table("prefs", fields={"prompt": "str", "chosen": "str", "rejected": "str", "_fold": "str"}),
        force=True,
    )
    db["prefs"].insert(
        [dict(prompt=p, chosen=c, rejected=r, _fold="train") for p, c, r in tasks.pairs(32, 1)]
    )
    settings = dict(fixtures.FAST_TRAINING, per_device_train_batch_size=4, logging_steps=5)
    trainer = LLMTrainer(
        "dpo-ray",
        objective="dpo",
        key=("prompt", "chosen", "rejected"),
        select=db["prefs"].select(),
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        lora_modules_to_save=["lm_head"],
        beta=0.5,
        max_steps=10,
        save_steps=5,
        output_dir=str(tmp_path / "out"),
        ray_configs=ray_configs(ray_tmp, workers=2),
        **settings,
    )
    db.apply(LLM("pref", model_name_or_path=tiny_model_dir, trainer=trainer), force=True)
    rows = list_checkpoints(db, "pref")
    assert [r["step"] for r in rows] == [5, 10]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= set(
        rows[-1]["metrics"]
    )
    stored = db.load("LLM", "pref")
    assert stored.adapter_id.identifier == rows[-1]["identifier"]
    assert len(stored.predict_batches(["dxy:", "lxy:"], max_new_tokens=3)) == 2
