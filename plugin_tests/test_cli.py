"""The command line reads what a training left in the database; the demo (slow) teaches SmolLM2."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli


def test_cli_lists_models_checkpoints_and_answers(tiny_model_dir, tmp_path, capsys):
    from superduper import CFG, superduper

    old = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{tmp_path / 'artifact_store'}"
    try:
        db = superduper(f"sqlite:///{tmp_path / 'demo.db'}", force_apply=True)
        fixtures.insert_rows(db)
        db.apply(
            fixtures.make_llm(db, tiny_model_dir, max_steps=450, save_steps=225, eval_steps=225), force=True
        )
        adapter = db.load("LLM", "tiny").adapter_id.identifier
        capsys.readouterr()

        assert cli.main(["--data", str(tmp_path), "models"]) == 0
        assert capsys.readouterr().out.split() == ["tiny"]

        cli.main(["--data", str(tmp_path), "checkpoints", "--model", "tiny"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert [re.search(r"step=(\d+)", line).group(1) for line in lines] == ["225", "450"]
        assert [line.split()[1] for line in lines if line.startswith("*")] == [adapter]
        assert all("eval_loss=" in line for line in lines)

        cli.main(["--data", str(tmp_path), "ask", "--model", "tiny", "5+1=", "7+3="])
        assert capsys.readouterr().out.splitlines() == ["Q: 5+1=", "A: 6", "Q: 7+3=", "A: 10"]
    finally:
        CFG.artifact_store = old


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
