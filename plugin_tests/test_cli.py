"""The command line reads what a training left in the database; the demo (slow) teaches SmolLM2."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli
from superduper_transformers.checkpoint import best_of_model


def test_cli_lists_models_checkpoints_and_answers(tiny_model_dir, tmp_path, capsys):
    from superduper import CFG, superduper

    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{tmp_path / 'artifact_store'}"
    try:
        db = superduper(f"sqlite:///{tmp_path / 'demo.db'}", force_apply=True)
        fixtures.insert_rows(db)
        db.apply(fixtures.make_llm(db, tiny_model_dir, max_steps=4, save_steps=2, eval_steps=2), force=True)
        adapter = db.load("LLM", "tiny").adapter_id.identifier
        capsys.readouterr()

        assert cli.main(["--data", str(tmp_path), "models"]) == 0
        assert capsys.readouterr().out.split() == ["tiny"]

        cli.main(["--data", str(tmp_path), "checkpoints", "--model", "tiny"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert [re.search(r"step=(\d+)", line).group(1) for line in lines] == ["2", "4"]
        assert [line.split()[1] for line in lines if line.startswith("*")] == [adapter]
        assert all("eval_loss=" in line for line in lines)
        best = best_of_model(db, "tiny")["identifier"]
        assert [line.split()[1] for line in lines if line.endswith("(best)")] == [best]

        cli.main(["--data", str(tmp_path), "ask", "--model", "tiny", "5+1=", "7+3="])
        # the stored model's own answers (what it learned is asserted in test_training.py)
        expected = db.load("LLM", "tiny").predict_batches(["5+1=", "7+3="])
        assert capsys.readouterr().out.splitlines() == [
            "Q: 5+1=",
            f"A: {expected[0].strip()}",
            "Q: 7+3=",
            f"A: {expected[1].strip()}",
        ]
    finally:
        CFG.artifact_store = old


def test_version_names_this_checkout_and_subcommands_run_as_a_module(tmp_path):
    import superduper_transformers

    root = os.path.dirname(os.path.dirname(os.path.abspath(superduper_transformers.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-m", "superduper_transformers", "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    package = os.path.join(root, "superduper_transformers")
    assert out.stdout.strip() == f"superduper_transformers {superduper_transformers.__version__} ({package})"

    # the subcommands of cli.py, through `python -m superduper_transformers`
    out = subprocess.run(
        [sys.executable, "-m", "superduper_transformers", "--data", str(tmp_path), "models"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == ""  # an empty database holds no model


def test_a_command_prints_its_own_output_only(tmp_path):
    """No dependency's import-time noise: superduper's missing-secrets-folder warning, and
    bitsandbytes' (and its `kernels` helper's) lines about an optional CPU kernel, which it
    prints on CPUs with AVX-512-BF16 when trl pulls in peft. The command's own error stays."""
    import superduper_transformers

    root = os.path.dirname(os.path.dirname(os.path.abspath(superduper_transformers.__file__)))
    home = tmp_path / "home"  # no ~/.superduper/secrets there: superduper would warn
    home.mkdir()
    env = dict(os.environ, PYTHONPATH=root, HOME=str(home))
    config = os.path.join(root, "examples", "tiny_lora.yaml")
    argv = ["--data", str(tmp_path), "train", config, "--check"]  # empty db: imports trl, then stops
    out = subprocess.run(
        [sys.executable, "-m", "superduper_transformers", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 2, printed[-3000:]
    assert "`data.table`='facts' is not a table in the database" in out.stderr
    for noise in ("not a valid directory", "gemm_4bit", "publisher trust check"):
        assert noise not in printed, printed[-3000:]

    # a secrets folder the user set, and got wrong, is still reported
    env["SUPERDUPER_SECRETS_VOLUME"] = str(tmp_path / "no-such-folder")
    out = subprocess.run(
        [sys.executable, "-m", "superduper_transformers", "--data", str(tmp_path), "models"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"The path '{tmp_path / 'no-such-folder'}' is not a valid directory" in out.stderr


@pytest.mark.slow
def test_demo_teaches_smollm2_the_facts(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run(
        [sys.executable, "-m", "superduper_transformers.demo", "--data", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Learned 4/4 facts" in out.stdout
    assert "A: A snorkelbeast is bright teal." in out.stdout
    # act 2: the corrections start a round whose candidate is promoted and answers as corrected
    assert "round 1  promoted" in out.stdout and "2 new + 4 replayed rows" in out.stdout
    assert out.stdout.rstrip().count("A: Quintara was founded by Mira Oskarsen.") == 1
