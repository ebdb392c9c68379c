"""Export: a trained model leaves the database as a plain peft adapter or a merged Hugging Face model.

One SQLite datalayer is trained once for the module (in the CLI's ``--data`` layout):
``tiny`` (LoRA, learns the facts), ``q4`` (4-bit QLoRA, a few steps: only the merge is
checked) and ``full`` (full fine-tune, a few steps).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli
from superduper_transformers.checkpoint import CheckpointError, list_checkpoints, verify_directory
from superduper_transformers.export import MANIFEST, ExportError, export_model


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    from superduper import CFG, superduper

    data = tmp_path_factory.mktemp("export-data")
    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{data / 'artifact_store'}"
    try:
        db = superduper(f"sqlite:///{data / 'demo.db'}", force_apply=True)
        fixtures.insert_rows(db)
        db.apply(
            fixtures.make_llm(db, tiny_model_dir, max_steps=450, save_steps=225, eval_steps=225), force=True
        )
        db.apply(
            fixtures.make_llm(db, tiny_model_dir, "q4", bits=4, max_steps=30, save_steps=30, eval_steps=30),
            force=True,
        )
        db.apply(
            fixtures.make_llm(
                db, tiny_model_dir, "full", use_lora=False, max_steps=20, save_steps=20, eval_steps=20
            ),
            force=True,
        )
        yield db, data
    finally:
        CFG.artifact_store = old


def _greedy(model, tokenizer, prompts, max_new_tokens=4):
    """Greedy answers as ``LLM.predict_batches`` computes them: left padding, new tokens only."""
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = out[:, batch["input_ids"].shape[1] :]
    return [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]


def _verify(out, tmp_path):
    """The export's manifest vouches for every other file in the folder."""
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    copy = tmp_path / "without-manifest"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(MANIFEST))
    verify_directory(str(copy), manifest, "export")
    return manifest


def test_adapter_export_loads_with_plain_peft_and_answers_alike(trained, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    db, _ = trained
    llm = db.load("LLM", "tiny")
    expected = fixtures.answers(llm)
    assert sum(a == c for a, (_, c) in zip(expected, fixtures.FACTS)) >= 24, expected

    out = export_model(db, "tiny", tmp_path / "adapter")
    manifest = _verify(out, tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= set(manifest)
    assert not {"optimizer.pt", "trainer_state.json", "model.safetensors"} & set(os.listdir(out))

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out).eval()
    assert _greedy(model, AutoTokenizer.from_pretrained(out), [p for p, _ in fixtures.FACTS]) == expected


def test_merged_export_loads_without_peft_and_answers_alike(trained, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    db, _ = trained
    expected = fixtures.answers(db.load("LLM", "tiny"))
    first = list_checkpoints(db, "tiny")[0]["identifier"]  # step 225, not the one the LLM uses
    out = export_model(db, "tiny", tmp_path / "merged", merge=True)
    manifest = _verify(out, tmp_path)
    assert "model.safetensors" in manifest and "adapter_config.json" not in manifest

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not hasattr(model, "peft_config") and model.dtype == torch.float32
    assert _greedy(model, AutoTokenizer.from_pretrained(out), [p for p, _ in fixtures.FACTS]) == expected

    half = export_model(db, "tiny", tmp_path / "bf16", checkpoint=first, merge=True, dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(half, dtype="auto").dtype == torch.bfloat16


def test_qlora_merges_onto_the_unquantized_base(trained, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    db, _ = trained
    out = export_model(db, "q4", tmp_path / "q4-merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linears = [m for m in merged.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is torch.nn.Linear for m in linears)
    assert all(m.weight.dtype == torch.float32 for m in linears)
    # the adapter is in the weights: they moved from the base's
    assert not torch.equal(
        merged.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight
    )


def test_full_fine_tune_exports_its_weights(trained, tmp_path):
    from safetensors.torch import load_file

    db, _ = trained
    ckpt = db.load("Checkpoint", list_checkpoints(db, "full")[-1]["identifier"])
    out = export_model(db, "full", tmp_path / "full")
    _verify(out, tmp_path)
    exported, stored = (load_file(os.path.join(d, "model.safetensors")) for d in (out, ckpt.local_path))
    assert exported.keys() == stored.keys()
    assert all((exported[k] == stored[k].float()).all() for k in stored)


def test_export_refuses_what_it_cannot_do(trained, tmp_path):
    db, _ = trained
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"`out_dir`=.*busy.* is a folder that is not empty"):
        export_model(db, "tiny", busy)
    assert os.listdir(busy) == ["keep.txt"]
    with pytest.raises(ExportError, match=r"`checkpoint`='nope' is not a checkpoint of LLM `tiny`"):
        export_model(db, "tiny", tmp_path / "a", checkpoint="nope")
    other = list_checkpoints(db, "q4")[0]["identifier"]
    with pytest.raises(ExportError, match="is not a checkpoint of LLM `tiny`"):
        export_model(db, "tiny", tmp_path / "b", checkpoint=other)
    with pytest.raises(ExportError, match=r"`dtype`='int8' is not one of bf16, fp16, fp32"):
        export_model(db, "tiny", tmp_path / "c", dtype="int8")
    with pytest.raises(ExportError, match=r"`identifier`='ghost' is not an LLM"):
        export_model(db, "ghost", tmp_path / "d")
    assert sorted(os.listdir(tmp_path)) == ["busy"]  # nothing half-written left behind

    # an export folder is verified like a checkpoint: a changed byte is found
    out = export_model(db, "tiny", tmp_path / "e")
    with open(os.path.join(out, "adapter_config.json"), "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        _verify(out, tmp_path)


def test_cli_export_end_to_end(trained, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    db, data = trained
    expected = fixtures.answers(db.load("LLM", "tiny"))
    out = tmp_path / "cli-merged"
    capsys.readouterr()
    assert cli.main(["--data", str(data), "export", "tiny", "--out", str(out), "--merge"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ") and "model.safetensors" in printed and MANIFEST in printed
    _verify(str(out), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert _greedy(model, AutoTokenizer.from_pretrained(out), [p for p, _ in fixtures.FACTS]) == expected

    # refused with the reason on stderr and exit status 2
    assert cli.main(["--data", str(data), "export", "tiny", "--out", str(out)]) == 2
    assert "is a folder that is not empty" in capsys.readouterr().err
