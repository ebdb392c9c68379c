"""Progress bars show on a terminal and stay out of logs and pipes."""

from __future__ import annotations

import io
import os
import sys

from superduper_transformers.store import artifacts


class Terminal(io.StringIO):
    """stderr as a terminal (what tqdm's ``disable=None`` asks)."""

    def isatty(self):
        return True


def _copy(db, tmp_path, name):
    source = tmp_path / name
    source.mkdir()
    (source / "weights.bin").write_bytes(os.urandom(300_000))
    artifact_id = artifacts.new_artifact_id(db, "m")
    return artifacts.store_directory(db, str(source), artifact_id, verify=lambda path: None, step=1)


def test_a_large_artifact_copy_shows_a_bar_on_a_terminal_only(db, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(artifacts, "MIN_BYTES_FOR_A_BAR", 100_000)  # this copy counts as large

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    stored = _copy(db, tmp_path, "checkpoint-1")
    assert "Storing checkpoint-1" in terminal.getvalue() and "/300k" in terminal.getvalue()
    assert os.path.getsize(os.path.join(stored, "weights.bin")) == 300_000

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    _copy(db, tmp_path, "checkpoint-2")
    assert "Storing" not in sys.stderr.getvalue() and "\r" not in sys.stderr.getvalue()

    monkeypatch.setattr(artifacts, "MIN_BYTES_FOR_A_BAR", 10_000_000)  # a small copy: no bar at all
    monkeypatch.setattr(sys, "stderr", terminal)
    _copy(db, tmp_path, "checkpoint-3")
    assert "Storing checkpoint-3" not in terminal.getvalue()
