"""The package's imports form no cycle, and the layer contracts hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_cycle_in_the_package():
    grimp = __import__("grimp")
    graph = grimp.build_graph("superduper_transformers")
    modules = set(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}
    cycles, done, path = [], set(), []

    def visit(m):
        path.append(m)
        for n in sorted(edges[m]):
            if n in path:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in done:
                visit(n)
        path.pop()
        done.add(m)

    for m in sorted(modules):
        if m not in done:
            visit(m)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layer_contracts_hold():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or "lint-imports"
    out = subprocess.run([exe], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_the_command_line_does_not_import_peft_or_bitsandbytes():
    """`superduper-transformers status` and friends open the package only: peft and
    bitsandbytes (about 10 s of imports on a CPU) load when a training starts."""
    code = (
        "import sys; from superduper_transformers.cli import main; import superduper_transformers; "
        "print(sorted(m for m in ('peft', 'bitsandbytes', 'trl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_checkpoint_folder_prefix_is_transformers_own():
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from superduper_transformers import resume

    assert resume.PREFIX_CHECKPOINT_DIR == PREFIX_CHECKPOINT_DIR


def test_stored_components_keep_their_import_paths():
    """superduper writes each component's import path into its row and imports it from
    there on `db.load`: a stored class that moves breaks every database written before
    (and two paths for one class name in one db are refused). These paths are frozen."""
    from superduper_transformers.checkpoint import Checkpoint
    from superduper_transformers.listener import LLMListener
    from superduper_transformers.metric import ImportedMetric
    from superduper_transformers.model import LLM
    from superduper_transformers.promote import Promotions
    from superduper_transformers.resume import TrainingRun
    from superduper_transformers.store.identity import DatabaseIdentity
    from superduper_transformers.trainer import LLMTrainer

    classes = (
        Checkpoint,
        LLM,
        LLMListener,
        Promotions,
        TrainingRun,
        LLMTrainer,
        ImportedMetric,
        DatabaseIdentity,
    )
    stored = {f"{c.__module__}.{c.__name__}" for c in classes}
    assert stored == {
        "superduper_transformers.checkpoint.Checkpoint",
        "superduper_transformers.model.LLM",
        "superduper_transformers.listener.LLMListener",
        "superduper_transformers.promote.Promotions",
        "superduper_transformers.resume.TrainingRun",
        "superduper_transformers.trainer.LLMTrainer",
        "superduper_transformers.metric.ImportedMetric",
        "superduper_transformers.store.identity.DatabaseIdentity",
    }
