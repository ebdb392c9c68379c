"""Padding-free and packed batches: completion labels intact, examples apart, facts learned."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures

IGNORE = -100


def _trainer(db, **kwargs):
    from superduper_transformers import LLMTrainer

    settings = dict(fixtures.FAST_TRAINING, max_steps=1)
    settings.update(kwargs)
    return LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), **settings)


def _sft_trainer(tiny_model_dir, tmp_path, trainer):
    """trl's trainer as the plugin builds it for the FACTS rows: (model, trainer, rows tokenized)."""
    from trl import SFTTrainer

    from superduper_transformers.hf import data
    from superduper_transformers.hf.loading import load_causal_lm, load_tokenizer
    from superduper_transformers.trainer_args import build_sft_config

    tokenizer = load_tokenizer({"pretrained_model_name_or_path": tiny_model_dir})
    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]
    dataset = data.build_dataset(tokenizer, rows, "x", "y", trainer.max_seq_length)
    args = build_sft_config(trainer, str(tmp_path / "out"), has_eval=False)
    model = load_causal_lm({"pretrained_model_name_or_path": tiny_model_dir})
    sft = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return model, sft, dataset


def _first_batch(tiny_model_dir, tmp_path, trainer):
    """The first training batch trl collates for the FACTS rows, and the rows tokenized alone."""
    model, sft, dataset = _sft_trainer(tiny_model_dir, tmp_path, trainer)
    batch = next(iter(sft.get_train_dataloader()))
    return model, batch, {tuple(e["input_ids"]): e["labels"] for e in dataset}


def _segments(batch):
    """(start, end) of each example in the one flat row of a padding-free batch."""
    positions = batch["position_ids"][0].tolist()
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:]))


@pytest.mark.parametrize("layout", [{}, {"packing": True, "max_seq_length": 64}], ids=["default", "packing"])
def test_collated_batch_keeps_completion_labels_inside_each_example(db, tiny_model_dir, tmp_path, layout):
    import torch

    model, batch, tokenized = _first_batch(tiny_model_dir, tmp_path, _trainer(db, **layout))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one flat row
    segments = _segments(batch)
    assert len(segments) >= 8  # a batch of 8 rows (or more packed)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    for start, end in segments:
        assert batch["position_ids"][0, start:end].tolist() == list(range(end - start))
        expected = tokenized[tuple(ids[start:end])]  # the segment is one whole example
        # Prompt positions stay -100, the completion keeps its labels; the first token of
        # an example is not predicted from the previous example.
        assert labels[start:end] == [IGNORE] + expected[1:]
        prompt = next(i for i, label in enumerate(expected) if label != IGNORE)
        assert prompt >= len("a+b=") and expected[prompt:] == ids[start + prompt : end]  # "c</s>"
    # Isolation: each example's logits inside the flat row equal its logits alone.
    with torch.no_grad():
        flat = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        for start, end in segments:
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            torch.testing.assert_close(flat[start:end], alone, atol=1e-4, rtol=1e-4)


def test_padding_free_by_default_and_the_user_setting_wins(db, tmp_path):
    from superduper_transformers.trainer_args import ConfigError, build_sft_config

    out = str(tmp_path / "out")
    args = build_sft_config(_trainer(db), out, has_eval=False)
    assert args.padding_free and not args.packing and args.max_length is None
    args = build_sft_config(_trainer(db, padding_free=False), out, has_eval=False)
    assert not args.padding_free and not args.packing and args.max_length == 512
    args = build_sft_config(_trainer(db, packing=True, max_seq_length=64), out, has_eval=False)
    assert args.packing and args.max_length == 64
    with pytest.raises(ConfigError, match=r"`packing=True` needs `max_seq_length`.*got None"):
        _trainer(db, packing=True, max_seq_length=None)


@pytest.fixture
def leaky_model(tiny_model_dir):
    """The tiny model with an attention that ignores the mask: flat examples see each other."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def leaky(module, query, key, value, attention_mask, **kwargs):
        kwargs.pop("is_causal", None)
        return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)

    AttentionInterface.register("leaky_test", leaky)
    AttentionMaskInterface.register("leaky_test", sdpa_mask)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="leaky_test")


def test_falls_back_to_padding_where_examples_would_see_each_other(
    db, tiny_model_dir, tmp_path, leaky_model, caplog_loguru
):
    from transformers import AutoModelForCausalLM

    from superduper_transformers.hf.packing import keep_examples_apart
    from superduper_transformers.trainer_args import build_sft_config

    args = build_sft_config(_trainer(db), str(tmp_path / "out"), has_eval=False)
    for attention in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attention)
        assert keep_examples_apart(model, args, explicit=False) is args
    padded = keep_examples_apart(leaky_model, args, explicit=False)
    assert not padded.padding_free and not padded.packing and args.padding_free
    assert any("Batches: padded, not padding-free, because" in m and "leaky_test" in m for m in caplog_loguru)
    # A layout the user chose is kept, with a warning.
    assert keep_examples_apart(leaky_model, args, explicit=True) is args
    assert any("Batches: padding-free, as set, although" in m for m in caplog_loguru)


def test_packed_training_learns_the_facts(db, tiny_model_dir, tmp_path):
    """Packed into 64-token sequences, one per step (about 8 rows, as a padded batch of 8)."""
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        packing=True,
        max_seq_length=64,
        per_device_train_batch_size=1,
        max_steps=300,  # 30/32 answered at 150 steps
        save_steps=300,
        eval_steps=300,
        output_dir=str(tmp_path / "out"),
    )
    before = fixtures.answered(llm)
    db.apply(llm, force=True)
    trained = db.load("LLM", "tiny")
    assert before <= 2 and fixtures.answered(trained) >= 26


def test_the_probe_leaves_a_4bit_model_training_as_before(tiny_model_dir, tmp_path, db):
    """bitsandbytes repacks 4-bit weights for inference at a CPU forward without grad (on
    AVX-512-BF16 CPUs), and QLoRA then learned far less: the probe must not trigger it."""
    import torch
    from trl import SFTTrainer

    from superduper_transformers.hf import data
    from superduper_transformers.hf.loading import load_tokenizer
    from superduper_transformers.hf.packing import examples_kept_apart
    from superduper_transformers.hf.train import load_model_for_training
    from superduper_transformers.settings import TrainSettings
    from superduper_transformers.trainer_args import build_sft_config

    trainer = _trainer(db, bits=4, lora_dropout=0.0, max_seq_length=64)
    args = build_sft_config(trainer, str(tmp_path / "out"), has_eval=False)
    tokenizer = load_tokenizer({"pretrained_model_name_or_path": tiny_model_dir})
    dataset = data.build_dataset(tokenizer, [{"x": p, "y": c} for p, c in fixtures.FACTS], "x", "y", 64)

    def first_gradient(probe: bool):
        torch.manual_seed(0)
        kwargs = {"pretrained_model_name_or_path": tiny_model_dir}
        model = load_model_for_training(kwargs, TrainSettings.from_trainer(trainer, args))
        if probe:
            assert examples_kept_apart(model)[0]
        sft = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        model.train()
        sft.compute_loss(model, dict(next(iter(sft.get_train_dataloader())))).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(first_gradient(probe=True), first_gradient(probe=False))


def test_rows_of_one_length_train_padded_and_long_tailed_rows_padding_free(
    db, tiny_model_dir, tmp_path, caplog_loguru
):
    """Flattening removes padding; with sdpa it also attends a batch as one long sequence
    (B times the attention work). Rows of nearly one length have no padding to remove:
    the default stays padded there, and flattens long-tailed rows."""
    import random

    from transformers import AutoModelForCausalLM

    from superduper_transformers.hf import data
    from superduper_transformers.hf.loading import load_tokenizer
    from superduper_transformers.hf.packing import keep_examples_apart, padding_share
    from superduper_transformers.trainer_args import build_sft_config

    tokenizer = load_tokenizer({"pretrained_model_name_or_path": tiny_model_dir})
    rng = random.Random(0)
    same = [{"x": "1+2=" * 8, "y": "3"} for _ in range(64)]
    tailed = [{"x": "1+2=" * int(rng.lognormvariate(1.0, 1.0) + 1), "y": "3"} for _ in range(64)]
    same_ds, tailed_ds = (data.build_dataset(tokenizer, r, "x", "y", 512) for r in (same, tailed))
    assert padding_share(same_ds, 8) == 0.0
    assert padding_share(tailed_ds, 8) > 0.4  # measured 0.6
    args = build_sft_config(_trainer(db), str(tmp_path / "out"), has_eval=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")

    padded = keep_examples_apart(model, args, explicit=False, train_dataset=same_ds)
    assert not padded.padding_free and args.padding_free
    assert any(
        "Batches: padded, not padding-free: the rows are of nearly one length" in m for m in caplog_loguru
    )
    assert keep_examples_apart(model, args, explicit=False, train_dataset=tailed_ds) is args
    assert keep_examples_apart(model, args, explicit=True, train_dataset=same_ds) is args  # the user's choice


@pytest.mark.parametrize("layout", [dict(padding_free=False), dict(packing=True, max_seq_length=64)])
def test_trl_passes_over_the_tokenized_rows_only_to_pack_them(db, tiny_model_dir, tmp_path, layout):
    """The rows arrive tokenized and cut: trl does not map them again (a pass of minutes
    over a large table), except to pack them."""
    _, sft, dataset = _sft_trainer(tiny_model_dir, tmp_path, _trainer(db, **layout))
    if layout.get("packing"):
        assert len(sft.train_dataset) < len(dataset)  # packed: fewer, fuller rows
    else:
        assert sft.train_dataset._fingerprint == dataset._fingerprint  # the same rows, not re-mapped
        assert sft.train_dataset[0]["labels"] == dataset[0]["labels"]
