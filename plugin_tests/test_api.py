"""The documented module ``superduper_transformers.training``: its keywords reach the trainer."""

from __future__ import annotations

from plugin_tests import fixtures
from superduper_transformers.checkpoint import best_checkpoint, list_checkpoints


def test_train_passes_its_kwargs_to_the_trainer(db, tiny_model_dir, tmp_path):
    # `train(**kwargs)` is documented as "all the kwargs will be passed to Trainer":
    # a compute_metrics metric is recorded in the db and chooses the best checkpoint.
    from transformers import AutoTokenizer

    from superduper_transformers.hf.data import build_dataset
    from superduper_transformers.trainer_args import build_sft_config
    from superduper_transformers.training import train

    llm = fixtures.make_llm(db, tiny_model_dir)
    db.apply(llm, force=True, jobs=False)  # the row the callback updates (no fit job)
    llm = db.load("LLM", "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]
    dataset = build_dataset(tokenizer, rows, "x", "y", max_length=32)
    args = build_sft_config(
        llm.trainer,
        output_dir=str(tmp_path / "out"),
        has_eval=True,
        max_steps=40,
        save_steps=10,
        eval_steps=10,
        save_total_limit=1,
        metric_for_best_model="answer_accuracy",
        greater_is_better=True,
    )
    calls = []

    def answer_accuracy(eval_pred):
        predictions, labels = eval_pred  # argmax ids, from preprocess_logits_for_metrics
        shifted = labels[:, 1:]
        mask = shifted != -100
        calls.append(predictions.shape)
        return {"answer_accuracy": float((predictions[:, :-1] == shifted)[mask].mean())}

    train(
        args,
        dataset,
        dataset,
        {"pretrained_model_name_or_path": tiny_model_dir},
        {"pretrained_model_name_or_path": tiny_model_dir},
        db=db,
        llm=llm,
        config=llm.trainer,
        compute_metrics=answer_accuracy,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
    )

    assert len(calls) == 4  # one evaluation every 10 of 40 steps
    history = db.load("LLM", "tiny").trainer.metric_values["eval_answer_accuracy"]
    assert len(history) == 4 and all(0.0 <= v <= 1.0 for v in history)
    # save_total_limit=1 keeps the best, and the last that the model uses (transformers'
    # meaning without `load_best_model_at_end`)
    kept = list_checkpoints(db, "tiny")
    best = best_checkpoint(kept, "eval_answer_accuracy", True)
    assert best["metrics"]["eval_answer_accuracy"] == max(history)
    assert best["step"] == 10 * (max(range(4), key=lambda i: (history[i], i)) + 1)
    assert {r["step"] for r in kept} == {best["step"], 40}
    assert db.load("LLM", "tiny").adapter_id.step == 40
