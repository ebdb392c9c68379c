"""The command line as a user runs it: import rows, train from a YAML config, watch the
progress from another process, stop with Ctrl-C, resume; bad input gives clear errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from plugin_tests import fixtures
from superduper_transformers import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_lora.yaml")
#: The example config (checkpoints at steps 80, 160, 240), logging often.
OVERRIDES = ["trainer.logging_steps=5"]


@pytest.fixture
def data_dir(tmp_path, artifact_store):
    """The ``--data`` folder (db + artifact store); restores ``CFG.artifact_store`` after."""
    folder = tmp_path / "data"
    folder.mkdir()
    return str(folder)


def write_facts(path, rows=None) -> str:
    rows = rows or (
        [{"x": p, "y": c, "_fold": "train"} for p, c in fixtures.FACTS]
        + [{"x": p, "y": c, "_fold": "valid"} for p, c in fixtures.VALID]
    )
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of the command line, in this process."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_bad_config_reports_every_problem_at_once_and_runs_nothing(tmp_path, data_dir, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "model:\n  identifier: m\n  model_name_or_path: /nowhere\n  prompt_template: 'Q: {question}'\n"
        "data:\n  tabel: facts\n  key: [x, y]\n"
        "trainer:\n  lora_rr: 8\n  max_steps: many\n  lora_dropout: 2\n  learning_rate: 3e-3\n"
    )
    code, out, err = run_cli(
        capsys, "--data", data_dir, "train", config, "trainer.learning_rate=-1", "trainer.seed"
    )
    assert code == 2 and out == ""
    assert "Traceback" not in err and "nothing was run" in err
    for expected in (
        "override 'trainer.seed' is not `key=value`",
        "`data.tabel` is not a known setting. Did you mean `data.table`?",
        "`data.table` is required",
        "`trainer.lora_rr` is not a known setting. Did you mean `trainer.lora_r`",
        "`trainer.max_steps` must be int, got 'many'",
        "`trainer.lora_dropout` must be a number in [0, 1) (e.g. 0.05), got 2",
        "`trainer.learning_rate` must be a number > 0 (e.g. 2e-4), got -1",  # the override won
    ):
        assert expected in err, (expected, err)
    assert os.listdir(data_dir) == []  # no database was even opened

    # 3e-3 is a float (PyYAML alone reads it as a string), and the fixed config passes the schema;
    # what needs the db comes next: the table must exist.
    config.write_text(
        config.read_text()
        .replace("tabel", "table")
        .replace("lora_rr", "lora_r")
        .replace("many", "10")
        .replace("lora_dropout: 2", "lora_dropout: 0.1")
        .replace("{question}", "{input}")
    )
    code, out, err = run_cli(capsys, "--data", data_dir, "train", config, "--check")
    assert code == 2 and "Traceback" not in err
    assert "`data.table`='facts' is not a table in the database" in err
    assert "import-data FILE.jsonl --table facts" in err

    code, _, err = run_cli(capsys, "--data", data_dir, "train", tmp_path / "missing.yaml")
    assert code == 2 and "cannot read the config" in err and "missing.yaml" in err
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    code, _, err = run_cli(capsys, "--data", data_dir, "train", tmp_path / "list.yaml")
    assert code == 2 and "must be a mapping" in err


def test_import_data_writes_folds_and_refuses_bad_files(tmp_path, data_dir, tiny_model_dir, capsys):
    jsonl = write_facts(tmp_path / "rows.jsonl", [{"x": p, "y": c} for p, c in fixtures.FACTS])
    code, out, err = run_cli(
        capsys, "--data", data_dir, "import-data", jsonl, "--table", "facts", "--valid-fraction", "0.25"
    )
    assert code == 0, err
    assert out.strip() == "32 rows into `facts` (24 train, 8 valid)"
    from superduper_transformers.cli.common import connect

    class Args:
        data, uri, artifact_store = data_dir, None, None

    db = connect(Args)
    rows = list(db["facts"].select().execute())
    assert sorted((r["x"], r["y"]) for r in rows) == sorted(fixtures.FACTS)
    assert sorted(r["_fold"] for r in rows).count("valid") == 8

    csv = tmp_path / "more.csv"
    csv.write_text("x,y\n1+1=,2\n2+2=,4,extra\n")
    code, _, err = run_cli(capsys, "--data", data_dir, "import-data", csv, "--table", "facts")
    assert code == 2 and "more.csv, line 3: 2 columns in the header (x, y), another number here" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": "1+1=", "y": "2"}\n{"x": oops}\n')
    code, _, err = run_cli(capsys, "--data", data_dir, "import-data", bad, "--table", "facts")
    assert code == 2 and "bad.jsonl, line 2: not JSON" in err
    other = write_facts(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    code, _, err = run_cli(capsys, "--data", data_dir, "import-data", other, "--table", "facts")
    assert code == 2 and "table `facts` exists without the column(s) ['question', 'answer']" in err
    code, _, err = run_cli(capsys, "--data", data_dir, "import-data", tmp_path / "x.txt", "--table", "t")
    assert code == 2 and "no such file" in err
    assert "Traceback" not in err
    assert len(list(db["facts"].select().execute())) == 32  # nothing of the bad files went in

    # A config reads the table, filtered: `--check` counts the rows it would train on.
    check = ["--data", data_dir, "train", "--check", EXAMPLE, f"model.model_name_or_path={tiny_model_dir}"]
    train, valid = (sum(r["_fold"] == f and r["y"] == "6" for r in rows) for f in ("train", "valid"))
    code, out, err = run_cli(capsys, *check, "data.filter={y: '6'}")
    assert code == 0, err
    assert f"the config and the data are fine: {train} training rows, {valid} validation rows" in out
    code, out, err = run_cli(capsys, *check, "data.filter={lang: en}")
    assert code == 2 and "`data.filter` names column(s) ['lang'] that the table `facts` lacks" in err


def _status(capsys, data_dir, model):
    code, out, err = run_cli(capsys, "--data", data_dir, "status", model)
    assert code == 0, err
    return out.strip()


def test_train_is_watched_from_another_process_stopped_with_ctrl_c_and_resumed(
    tmp_path, data_dir, tiny_model_dir, capsys
):
    code, _, err = run_cli(
        capsys, "--data", data_dir, "import-data", write_facts(tmp_path / "f.jsonl"), "--table", "facts"
    )
    assert code == 0, err
    # The training waits at step 100 until the test has sent Ctrl-C: the stop is at a
    # known step however fast the machine trains (the resumed run passes step 100 freely).
    release = tmp_path / "release"
    hold = f'trainer.callbacks=[{{class: "plugin_tests.fixtures:HoldAt", kwargs: {{step: 100, until: "{release}"}}}}]'
    argv = [
        "--data",
        data_dir,
        "train",
        EXAMPLE,
        f"model.model_name_or_path={tiny_model_dir}",
        *OVERRIDES,
        hold,
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    log = open(tmp_path / "train.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "superduper_transformers", *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        # The training process writes its progress; this process reads it from the db.
        seen, holding = [], f"{release}.holding"
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            # (exit code 2 until the model is in the db)
            _, line, _ = run_cli(capsys, "--data", data_dir, "status", "tiny-lora")
            m = re.search(r"step (\d+)/240", line)
            if m:
                seen.append(int(m.group(1)))
                if "loss " in line and os.path.exists(holding):  # held at step 100
                    break
            time.sleep(1)
        assert seen and os.path.exists(holding), (seen, log.seek(0) or log.read()[-3000:])
        assert "running" in line and "loss " in line and "tokens/s" in line and "ETA" in line, line
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        time.sleep(1)  # the signal handler runs in the held main thread
        release.touch()
        assert proc.wait(timeout=300) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    printed = log.read()
    assert "Stopping after this step" in printed and "Traceback" not in printed, printed[-3000:]
    m = re.search(
        r"Interrupted: run (\w+) of tiny-lora stopped at step (\d+); its latest checkpoint "
        r"in the database: step (\d+)\. The database is consistent\. Resume with:\n  (.+)",
        printed,
    )
    assert m, printed[-3000:]
    experiment, stopped, saved = m.group(1), int(m.group(2)), int(m.group(3))
    assert (saved, stopped) == (80, 100)
    assert m.group(4) == shlex.join(["superduper-transformers", *argv])
    assert f"interrupted  step {stopped}/240" in _status(capsys, data_dir, "tiny-lora")

    # The same command again resumes the run from its checkpoint (here in this process).
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert f"Trained tiny-lora: run {experiment} finished at step 240" in out
    from superduper import superduper

    db = superduper(f"sqlite:///{data_dir}/demo.db", force_apply=True)
    run = db.load("TrainingRun", f"tiny-lora-run-{experiment}")
    assert [r["step"] for r in run.resumes] == [saved]
    assert (run.state, run.progress["step"], run.progress["phase"]) == ("finished", 240, "ended")
    code, out, _ = run_cli(capsys, "--data", data_dir, "checkpoints", "tiny-lora")
    steps = re.findall(r"step=(\d+)", out)
    assert steps[-1] == "240" and set(re.findall(r"run=(\w+)", out)) == {experiment}
    assert out.count("*") == 1 and out.count("(best)") == 1
    assert len(re.findall(r"size=[\d.]+ kB  saved=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out)) == len(steps)
    code, out, _ = run_cli(capsys, "--data", data_dir, "runs")
    assert out.startswith(f"tiny-lora  run {experiment}  finished") and "resumed 1x" in out
    # it learned: at least half the sums (measured: 28 of 32 after 150 steps, 32 after 300)
    assert fixtures.answered(db.load("LLM", "tiny-lora")) >= 16
    # and a second identical command does not overwrite the trained model
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and out.startswith("Nothing to train: tiny-lora was trained with these settings")


def _tmux(*args) -> str:
    return subprocess.run(
        ["tmux", "-L", "sdt-test", *args], capture_output=True, text=True, check=True
    ).stdout


def _wait_for(window: str, pattern: str, timeout: float = 600) -> re.Match:
    """Wait until the pane shows ``pattern`` (joined lines); return the last match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        screen = _tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", window)
        found = list(re.finditer(pattern, screen))
        if found:
            return found[-1]
        time.sleep(0.5)
    raise AssertionError(f"{pattern!r} never appeared in {window}:\n{screen[-3000:]}")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install tmux)")
def test_in_a_terminal_train_shows_progress_stops_on_ctrl_c_and_resumes(
    tmp_path, data_dir, tiny_model_dir, capsys
):
    """As a user in a terminal: a progress bar, `status --watch` in a second window,
    Ctrl-C, the printed command resumes the run."""
    code, _, err = run_cli(
        capsys, "--data", data_dir, "import-data", write_facts(tmp_path / "f.jsonl"), "--table", "facts"
    )
    assert code == 0, err
    prog = f"env PYTHONPATH={ROOT} OMP_NUM_THREADS=1 {sys.executable} -m superduper_transformers"
    # Longer than the example, and held at step 100 until Ctrl-C was pressed: the stop is
    # at a known step however fast the machine trains.
    release = tmp_path / "release"
    hold = shlex.quote(
        f'trainer.callbacks=[{{class: "plugin_tests.fixtures:HoldAt", kwargs: {{step: 100, until: "{release}"}}}}]'
    )
    train = (
        f"{prog} --data {data_dir} train {EXAMPLE} model.model_name_or_path={tiny_model_dir} "
        f"trainer.max_steps=480 {hold}"
    )
    _tmux("kill-server") if subprocess.run(
        ["tmux", "-L", "sdt-test", "has"], capture_output=True
    ).returncode == 0 else None
    _tmux("new-session", "-d", "-s", "t", "-x", "220", "-y", "50", "bash --norc --noprofile")
    try:
        # `status --watch` in a second window, started first: it waits for the run.
        _tmux("new-window", "-t", "t", "bash --norc --noprofile")
        _tmux(
            "send-keys",
            "-t",
            "t:1",
            f"{prog} --data {data_dir} status tiny-lora --watch --interval 1",
            "Enter",
        )
        _wait_for("t:1", r"waiting for a training run of tiny-lora")
        _tmux("send-keys", "-t", "t:0", f"{train}; echo EXIT=$?", "Enter")
        _wait_for("t:0", r"(\d+)/480 \[")  # tqdm's bar: a terminal gets one
        _wait_for("t:1", r"running  step \d+/480 \(\d+%\)  loss [\d.]+  [\d,]+ tokens/s  ETA \w+")
        deadline = time.time() + 600
        while not os.path.exists(f"{release}.holding") and time.time() < deadline:
            time.sleep(0.5)
        _tmux("send-keys", "-t", "t:0", "C-c")
        time.sleep(1)  # the signal handler runs in the held main thread
        release.touch()
        _wait_for("t:0", r"EXIT=130")
        m = _wait_for(
            "t:0",
            r"Interrupted: run (\w+) of tiny-lora stopped at step \d+; its latest checkpoint "
            r"in the database: step (\d+)\. The database is consistent\. Resume with:\s+(superduper-transformers .+)",
        )
        experiment, saved = m.group(1), int(m.group(2))
        _wait_for("t:1", rf"tiny-lora  run {experiment}  interrupted  step \d+/480")  # --watch ended
        assert "Traceback" not in _tmux("capture-pane", "-p", "-J", "-S", "-2000", "-t", "t:0")

        # The printed command, as the user would paste it.
        resume_cmd = m.group(3).strip().replace("superduper-transformers", prog, 1)
        _tmux("send-keys", "-t", "t:0", "clear", "Enter")
        _tmux("send-keys", "-t", "t:0", f"{resume_cmd}; echo EXIT=$?", "Enter")
        _wait_for("t:0", rf"Trained tiny-lora: run {experiment} finished at step 480")
        _wait_for("t:0", r"EXIT=0")
    finally:
        subprocess.run(["tmux", "-L", "sdt-test", "kill-server"], capture_output=True)
    from superduper import superduper

    db = superduper(f"sqlite:///{data_dir}/demo.db", force_apply=True)
    run = db.load("TrainingRun", f"tiny-lora-run-{experiment}")
    assert [r["step"] for r in run.resumes] == [saved] and run.state == "finished"


def test_train_never_prints_the_db_password(tmp_path, data_dir, tiny_model_dir, capsys, monkeypatch):
    """The resume hint and the interruption message show `--db` with `***` for its password."""
    import argparse
    import types

    from superduper_transformers.cli import train as cli_train
    from superduper_transformers.launch import progress

    secret = "S3CR3T-in-the-uri"
    code, _, err = run_cli(
        capsys, "--data", data_dir, "import-data", write_facts(tmp_path / "f.jsonl"), "--table", "facts"
    )
    assert code == 0, err
    real_connect = cli_train.connect
    dbs = []

    def connect(args, uri=None, store=None):  # the rows are in --data's db, not at that URI
        dbs.append(real_connect(argparse.Namespace(**{**vars(args), "uri": None}), None, store))
        return dbs[-1]

    def stopped(*args, **kwargs):  # as Ctrl-C ends a training, without training
        raise progress.TrainingStopped()

    monkeypatch.setattr(cli_train, "connect", connect)
    monkeypatch.setattr(
        cli_train, "_latest_run", lambda db, m: types.SimpleNamespace(experiment_id="e1", progress={})
    )
    monkeypatch.setattr("superduper.base.datalayer.Datalayer.apply", stopped)
    uri = f"mongodb://trainer:{secret}@db.example:27017/prod?authSource=admin"
    argv = ["--data", data_dir, "--db", uri, "train", EXAMPLE, f"model.model_name_or_path={tiny_model_dir}"]
    code, out, err = run_cli(capsys, *argv, f"db={uri}")
    assert code == 130, err
    assert secret not in out + err and "authSource" not in out + err
    shown = "'mongodb://trainer:***@db.example:27017/prod?***'"
    assert f"--db {shown} train" in out and "'db=mongodb://trainer:***@" in out
    assert f"Resume with:\n  superduper-transformers --data {data_dir} --db {shown}" in err
    assert "(with the db password in place of ***)" in err


def test_import_data_streams_in_batches_and_explains_bad_files(tmp_path, data_dir, capsys, monkeypatch):
    """Rows go in by batches (the file is never held whole); bad bytes, huge CSV fields and
    reserved table names get a message with the line and the fix; a BOM is dropped."""
    from superduper.backends.base.data_backend import BaseDataBackend

    from superduper_transformers.cli import data as cli_data

    def run(path, table="facts"):
        return run_cli(capsys, "--data", data_dir, "import-data", path, "--table", table)

    inserted = []
    real_insert = BaseDataBackend.do_insert

    def do_insert(self, table, documents, raw=False):
        if table == "facts":
            inserted.append(len(documents))
        return real_insert(self, table, documents, raw=raw)

    monkeypatch.setattr(BaseDataBackend, "do_insert", do_insert)
    monkeypatch.setattr(cli_data, "BATCH_ROWS", 10, raising=False)
    rows = [{"x": p, "y": c} for p, c in fixtures.FACTS]  # 32 rows
    code, out, err = run(write_facts(tmp_path / "f.jsonl", rows))
    assert code == 0, err
    assert inserted == [10, 10, 10, 2]

    long_text = "z" * 200_000  # over Python's 128 KiB CSV field limit
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfx,y\n1+1=,2\n" + f"long,{long_text}\n".encode())
    code, out, err = run(tmp_path / "bom.csv")
    assert code == 0, err
    from superduper_transformers.cli.common import connect

    db = connect(types.SimpleNamespace(data=data_dir, uri=None, artifact_store=None))
    assert "\ufeffx" not in db.load("Table", "facts").fields  # the BOM did not rename `x`
    assert any(r["x"] == "long" and r["y"] == long_text for r in db["facts"].select().execute())

    (tmp_path / "latin1.jsonl").write_bytes(b'{"x": "a", "y": "b"}\n{"x": "caf\xe9", "y": "b"}\n')
    code, _, err = run(tmp_path / "latin1.jsonl")
    assert code == 2 and "Traceback" not in err
    assert "latin1.jsonl, line 2: not UTF-8 (byte 0xe9 at byte 11 of the line)" in err and "iconv" in err
    monkeypatch.setattr(cli_data, "MAX_CSV_FIELD", 1000, raising=False)
    code, _, err = run(tmp_path / "bom.csv")
    assert code == 2 and "Traceback" not in err
    assert "bom.csv, line 3: a field is longer than 1,000 characters" in err
    for name, why in [
        ("Job", "starts with a capital letter"),
        ("job", "is the table `Job` of superduper or of this plugin"),
        ("training_history", "is the table `training_history`"),
        ("_rows", "starts with `_`"),
    ]:
        code, _, err = run(tmp_path / "f.jsonl", name)
        assert code == 2 and f"`--table`={name!r} {why}" in err and "choose another name" in err, err
    (tmp_path / "id.jsonl").write_text('{"_id": "1", "x": "a", "y": "b"}\n')
    code, _, err = run(tmp_path / "id.jsonl")
    assert code == 2 and "column(s) ['_id'] start with `_`" in err
    assert inserted == [10, 10, 10, 2, 2]  # nothing of the refused files went in
