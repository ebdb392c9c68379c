"""CUDA paths: QLoRA (bitsandbytes 4/8-bit) and bf16 LoRA on a GPU. Run with `make test-gpu`."""

from __future__ import annotations

import pytest

from plugin_tests import fixtures
from superduper_transformers.checkpoint import list_checkpoints

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU = dict(use_cpu=False, bf16=True)


@pytest.mark.parametrize("bits", [None, 4, 8])
def test_training_on_gpu_learns_and_stores_checkpoints(db, tiny_model_dir, bits):
    identifier = f"gpu-{bits or 'bf16'}"
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        identifier=identifier,
        bits=bits,
        max_steps=300,
        save_steps=150,
        eval_steps=150,
        **GPU,
    )
    db.apply(llm, force=True)
    assert [r["step"] for r in list_checkpoints(db, identifier)] == [150, 300]
    reloaded = db.load("LLM", identifier)
    model, _ = reloaded._get_pipeline()
    assert model.device.type == "cuda"
    if bits is not None:
        layer = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
        assert type(layer).__name__ == ("Linear4bit" if bits == 4 else "Linear8bitLt")
    assert fixtures.answered(reloaded) >= 31, fixtures.answers(reloaded)


def test_several_gpus_without_a_choice_is_an_error(db, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    llm = fixtures.make_llm(db, tiny_model_dir, identifier="multi", max_steps=2, **GPU)
    with pytest.raises(ValueError, match="2 GPUs are visible .* `num_gpus=1`"):
        db.apply(llm, force=True)


def test_num_gpus_one_uses_one_gpu(db):
    from superduper_transformers import LLMTrainer
    from superduper_transformers.trainer_args import build_sft_config

    trainer = LLMTrainer("t", key=("x", "y"), select=db["facts"].select(), num_gpus=1, **GPU)
    args = build_sft_config(trainer, output_dir="/tmp/unused", has_eval=False)
    assert args.n_gpu == 1 and args.device.type == "cuda"
