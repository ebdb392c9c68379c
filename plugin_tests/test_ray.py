"""Ray Train: workers train, rank 0 writes checkpoints into the db, failures resume, bad set-ups fail early.

Every Ray run here starts (or joins) a Ray instance and pays a fixed cost of about a
minute on 2 shared cores (``ray.init``, two worker processes importing torch,
transformers and superduper); the training itself takes seconds. Ray's files go to
a short folder under /tmp: Ray puts unix sockets below it and pytest's ``tmp_path``
is too deep for their 107-character limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import types

import pytest

from plugin_tests import fixtures
from superduper_transformers.checkpoint import file_manifest, list_checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- helpers ----------------------------------------------------------------
def _pids_using(path: str):
    """Processes that mention ``path`` (a temp dir of ours) in their command line or open files.

    Ray workers rename themselves (``ray::IDLE``) but keep their log files open there.
    """
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found = path.encode() in f.read()
            fds = f"/proc/{pid}/fd"
            found = found or any(
                os.readlink(os.path.join(fds, fd)).startswith(path) for fd in os.listdir(fds)
            )
        except OSError:  # gone, or not ours to read
            continue
        if found and int(pid) != os.getpid():
            pids.append(int(pid))
    return pids


def _stop_processes_using(path: str, grace: float = 15.0):
    """Wait up to ``grace`` seconds for the processes using ``path`` to end, then SIGKILL them.

    Scoped to our temp dir: `ray stop` would stop every Ray on the machine.
    :return: the processes that had to be killed.
    """
    deadline = time.time() + grace
    while _pids_using(path) and time.time() < deadline:
        time.sleep(0.5)
    left = _pids_using(path)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's temporary files; any Ray process left under it is stopped."""
    path = tempfile.mkdtemp(prefix="sdray-", dir="/tmp")
    yield path
    leftovers = _stop_processes_using(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"Ray processes were left running under {path}: {leftovers}"


def ray_configs(temp_dir, workers=2, **extra):
    """Local Ray with ``workers`` CPU workers (gloo) on this machine's 2 cores."""
    from ray.train import ScalingConfig

    configs = {"scaling_config": ScalingConfig(num_workers=workers, use_gpu=False)}
    if "address" not in extra:
        configs.update(num_cpus=2, temp_dir=temp_dir)
    configs.update(extra)
    return configs


def stored_checkpoint_dirs(store):
    """Folders of the artifact store that hold an HF checkpoint (a trainer_state.json)."""
    return {root for root, _, files in os.walk(store) if "trainer_state.json" in files}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _watch_ray_data(mp):
    """Record the SQL Ray Data reads and what the driver hands each worker (in this process)."""
    import ray.data
    import ray.train.torch

    seen = {"sql": [], "loops": []}
    read_sql = ray.data.read_sql

    def recording_read_sql(sql, *args, **kwargs):
        seen["sql"].append(sql)
        return read_sql(sql, *args, **kwargs)

    class RecordingTrainer(ray.train.torch.TorchTrainer):
        def __init__(self, *args, train_loop_config=None, datasets=None, **kwargs):
            seen["loops"].append((train_loop_config, sorted(datasets or {})))
            super().__init__(*args, train_loop_config=train_loop_config, datasets=datasets, **kwargs)

    mp.setattr(ray.data, "read_sql", recording_read_sql)
    mp.setattr(ray.train.torch, "TorchTrainer", RecordingTrainer)
    return seen


# -- 1. two workers through the datalayer -------------------------------------
#: Mechanics, not memorisation (local tests assert what the model learns): 2 workers x
#: batch 8 x 24 steps, an eval and a save every 8 steps, 2 checkpoints kept (one pruned).
STEPS, SAVE_EVERY, LIMIT = 24, 8, 2


@pytest.fixture(scope="module")
def ray_trained(tiny_model_dir, tmp_path_factory):
    """One LoRA training of the tiny model on 2 Ray CPU workers, recorded in a SQLite db."""
    from superduper import CFG, superduper

    root = tmp_path_factory.mktemp("ray-trained")
    ray_dir = tempfile.mkdtemp(prefix="sdray-", dir="/tmp")
    old_store = CFG.artifact_store
    CFG.artifact_store = f"filesystem://{root / 'artifact_store'}"
    uri = f"sqlite:///{root / 'db.sqlite'}"
    db = superduper(uri, force_apply=True)
    fixtures.insert_rows(db)
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=STEPS,
        save_steps=SAVE_EVERY,
        eval_steps=SAVE_EVERY,
        save_total_limit=LIMIT,
        logging_steps=SAVE_EVERY,  # a training loss in the run's progress
        output_dir=str(root / "out"),
        ray_configs=ray_configs(ray_dir),
        # a user callback, built by every worker from its import path
        callbacks=[
            {
                "class": "plugin_tests.fixtures:RecordingCallback",
                "kwargs": {"tag": "ray", "path": str(root / "events.txt")},
            }
        ],
    )
    start = time.time()
    with pytest.MonkeyPatch.context() as mp:
        seen = _watch_ray_data(mp)
        db.apply(llm, force=True)
    seconds = time.time() - start
    yield dict(db=db, uri=uri, root=root, seconds=seconds, ray_dir=ray_dir, seen=seen)
    db.disconnect()
    CFG.artifact_store = old_store
    leftovers = _stop_processes_using(ray_dir)
    shutil.rmtree(ray_dir, ignore_errors=True)
    assert not leftovers, leftovers


def test_two_workers_train_one_model(ray_trained):
    """The workers' gradients meet: both start from the same weights, both change them, and
    they end with the same weights (all-reduced), evaluated at every save."""
    with open(ray_trained["root"] / "events.txt.weights") as f:
        records = [line.split() for line in f]
    begin = {float(total) for event, _, _, total in records if event == "begin"}
    end = [(int(step), float(total)) for event, step, _, total in records if event == "end"]
    assert len(begin) == 1 and len(end) == 2  # one checksum per worker
    assert end[0] == end[1] and end[0][0] == STEPS
    assert end[0][1] != begin.pop()
    losses = ray_trained["db"].load("LLM", "tiny").trainer.metric_values["eval_loss"]
    assert len(losses) == STEPS // SAVE_EVERY and all(v > 0 for v in losses)


def test_training_rows_reach_the_workers_through_ray_data(ray_trained):
    seen = ray_trained["seen"]
    # Read on the cluster from the SQLite file, the training fold only ...
    assert seen["sql"] == ['SELECT "x", "y" FROM "facts" WHERE "_fold" = \'train\'']
    # ... and split across the workers: the job pickled into each carries no rows.
    ((loop, datasets),) = seen["loops"]
    assert datasets == ["train"] and loop["ray_data"] is True
    assert loop["job"].train_dataset is None


def test_rank0_alone_wrote_the_pruned_checkpoints(ray_trained):
    db = ray_trained["db"]
    rows = list_checkpoints(db, "tiny")
    steps = [r["step"] for r in rows]
    assert len(rows) == LIMIT and len(set(steps)) == LIMIT
    assert set(steps) <= set(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)) and STEPS in steps
    assert len({r["experiment_id"] for r in rows}) == 1
    for r in rows:  # one version each: nobody registered a step twice
        assert db.show("Checkpoint", r["identifier"]) == [0]
    # Every eval recorded exactly once: a second writer (rank 1) would double them.
    llm = db.load("LLM", "tiny")
    history = llm.trainer.metric_values
    assert history.get("eval_step") == list(range(SAVE_EVERY, STEPS + 1, SAVE_EVERY)), history
    assert llm.adapter_id.identifier in {r["identifier"] for r in rows}
    assert llm.adapter_id.step == STEPS  # the last (no `load_best_model_at_end`), as in transformers


def test_every_worker_built_the_user_callback(ray_trained):
    with open(ray_trained["root"] / "events.txt") as f:
        events = [line.split() for line in f]
    steps = [(int(step), rank0) for tag, event, step, rank0 in events if event == "step_end"]
    # one instance per worker, each seeing every step
    assert sorted(steps) == sorted((s, r) for s in range(1, STEPS + 1) for r in ("True", "False"))


def test_rank0_recorded_the_progress_of_the_run(ray_trained):
    db = ray_trained["db"]
    (run,) = [db.load("TrainingRun", name) for name in db.show("TrainingRun")]
    p = run.progress  # what `superduper-transformers status` shows
    assert (p["step"], p["max_steps"], p["phase"], run.state) == (STEPS, STEPS, "ended", "finished")
    assert p["loss"] > 0 and p["tokens_per_s"] > 0


def test_checkpoint_files_are_in_the_artifact_store(ray_trained):
    db = ray_trained["db"]
    store = os.path.join(ray_trained["root"], "artifact_store")
    paths = set()
    for r in list_checkpoints(db, "tiny"):
        ckpt = db.load("Checkpoint", r["identifier"])
        path = ckpt.local_path  # verified against the manifest
        assert path.startswith(store)
        assert {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(os.listdir(path))
        with open(os.path.join(path, "trainer_state.json")) as f:
            assert json.load(f)["global_step"] == r["step"]
        paths.add(path)
    # the pruned checkpoints left no files behind
    assert stored_checkpoint_dirs(store) == paths


def test_fresh_process_reloads_the_model_and_answers(ray_trained):
    script = textwrap.dedent(
        f"""
        from superduper import CFG, superduper
        CFG.artifact_store = {("filesystem://" + str(ray_trained["root"] / "artifact_store"))!r}
        from plugin_tests import fixtures
        db = superduper({ray_trained["uri"]!r}, force_apply=True)
        print("ANSWERS", fixtures.answers(db.load("LLM", "tiny")))
        """
    )
    shutil.rmtree(ray_trained["root"] / "out")  # only the db and the artifact store remain
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=REPO),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answers = eval(out.stdout.split("ANSWERS")[-1].strip())
    # The same greedy answers as the driver's copy of the stored model.
    assert answers == fixtures.answers(ray_trained["db"].load("LLM", "tiny"))


# -- 2. log_to_db=False: the final Ray checkpoint is registered ---------------
def test_log_to_db_off_registers_only_the_final_checkpoint(sqlite_db, tiny_model_dir, tmp_path, ray_tmp):
    db = sqlite_db
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=4,
        save_steps=2,
        eval_strategy="no",
        log_to_db=False,
        output_dir=str(tmp_path / "out"),
        ray_configs=ray_configs(ray_tmp, workers=1),
    )
    db.apply(llm, force=True)
    rows = list_checkpoints(db, "tiny")
    assert [r["step"] for r in rows] == [4]  # step 2 was saved by HF and Ray, not registered
    stored = db.load("LLM", "tiny")
    assert stored.adapter_id.identifier == rows[0]["identifier"]
    assert "adapter_model.safetensors" in os.listdir(stored.adapter_id.local_path)
    assert len(stored.predict_batches(["1+1=", "2+2="])) == 2  # base + stored adapter load


def test_handle_ray_results_copies_a_checkpoint_from_a_remote_filesystem(db, tiny_model_dir, tmp_path):
    """A Ray checkpoint on another filesystem (pyarrow, not a local path) is downloaded, then stored."""
    from pyarrow.fs import LocalFileSystem, SubTreeFileSystem
    from ray.train import Checkpoint as RayCheckpoint

    from superduper_transformers import LLM
    from superduper_transformers.training import handle_ray_results

    remote = tmp_path / "bucket"
    folder = remote / "run-abc" / "checkpoint_000001" / "checkpoint"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(
        json.dumps({"global_step": 7, "log_history": [{"loss": 1.5, "step": 7}]})
    )
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    bucket = SubTreeFileSystem(str(remote), LocalFileSystem())
    results = types.SimpleNamespace(
        checkpoint=RayCheckpoint("run-abc/checkpoint_000001", filesystem=bucket),
        path="run-abc",
    )
    llm = LLM("remote", model_name_or_path=tiny_model_dir)
    db.apply(llm, force=True)

    assert handle_ray_results(db, llm, results) is results
    (row,) = list_checkpoints(db, "remote")
    assert (row["step"], row["experiment_id"], row["metrics"]["loss"]) == (7, "run-abc", 1.5)
    stored = db.load("LLM", "remote").adapter_id.local_path
    assert file_manifest(stored) == file_manifest(str(folder))


def test_handle_ray_results_without_db_returns_results_untouched():
    from superduper_transformers.training import handle_ray_results

    results = object()
    assert handle_ray_results(None, None, results) is results


# -- 4. a Ray cluster started apart from the plugin ---------------------------
@pytest.fixture
def ray_head(ray_tmp):
    """A Ray head on 127.0.0.1 in its own process (token authentication on), stopped after."""
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",  # the head and this driver check the same ~/.ray/auth_token
        PYTHONPATH=REPO,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
    )
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    if not os.path.exists(os.path.expanduser("~/.ray/auth_token")):
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    port = free_port()
    cmd = [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    cmd += ["--num-cpus=2", f"--temp-dir={ray_tmp}", "--include-dashboard=false", "--disable-usage-stats"]
    log = open(os.path.join(ray_tmp, "head.log"), "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.time() < deadline, open(log.name).read()[-3000:]
                time.sleep(0.5)
        yield dict(address=f"127.0.0.1:{port}", temp_dir=ray_tmp)
    finally:
        # As `ray stop` does, but only for this cluster's processes: SIGTERM, then SIGKILL.
        for pid in _pids_using(ray_tmp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        _stop_processes_using(ray_tmp, grace=5)
        head.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_train_on_a_running_cluster(sqlite_db, tiny_model_dir, tmp_path, ray_head, monkeypatch):
    # Explicit addresses never switch token authentication on by themselves (Ray's rule).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    db = sqlite_db
    llm = fixtures.make_llm(
        db,
        tiny_model_dir,
        max_steps=40,
        save_steps=20,
        eval_steps=20,
        save_total_limit=None,
        output_dir=str(tmp_path / "out"),
        ray_configs=ray_configs(None, address=ray_head["address"]),
    )
    db.apply(llm, force=True)
    assert [r["step"] for r in list_checkpoints(db, "tiny")] == [20, 40]
    assert db.load("LLM", "tiny").adapter_id.step == 40
    # the workers ran on that cluster: their logs are in its temp dir
    logs = [n for _, _, files in os.walk(ray_head["temp_dir"]) for n in files if n.startswith("worker-")]
    assert logs


# -- 5. bad set-ups fail before anything is written ---------------------------
def test_missing_scaling_config_is_an_error(tmp_path):
    from superduper_transformers import LLMTrainer
    from superduper_transformers.launch.ray_settings import RayConfigError
    from superduper_transformers.trainer_args import ConfigError
    from superduper_transformers.training import train

    with pytest.raises(ConfigError, match="`ray_configs` needs a `scaling_config`"):
        LLMTrainer("t", key="x", select=None, ray_configs={"address": "127.0.0.1:6379"})
    with pytest.raises(
        RayConfigError, match=r"`ray_configs` needs a `scaling_config`.*got keys \['num_cpus'\]"
    ):
        train(None, None, None, {}, {}, ray_configs={"num_cpus": 2})
    with pytest.raises(
        RayConfigError, match=r"`ray_configs\['scaling_config'\]` must be a ray.train.ScalingConfig"
    ):
        train(None, None, None, {}, {}, ray_configs={"scaling_config": 2})
    with pytest.raises(RayConfigError, match="unknown key `num_workers`"):
        train(None, None, None, {}, {}, ray_configs={"scaling_config": {}, "num_workers": 2})


def test_relative_artifact_store_is_refused_before_the_apply(tiny_model_dir, tmp_path, ray_tmp, monkeypatch):
    from superduper import CFG, superduper

    from superduper_transformers.launch.ray_settings import RayConfigError

    # superduper writes the trainer's ray_configs blob to the (relative) store while it
    # plans the apply, before the refusal: keep that file out of the repository.
    monkeypatch.chdir(tmp_path)
    old = CFG.artifact_store
    CFG.artifact_store = "filesystem://./artifact_store"  # superduper's default
    try:
        db = superduper(f"sqlite:///{tmp_path / 'db.sqlite'}", force_apply=True)
        fixtures.insert_rows(db)
        llm = fixtures.make_llm(db, tiny_model_dir, ray_configs=ray_configs(ray_tmp))
        with pytest.raises(
            RayConfigError, match=r"artifact store `filesystem://./artifact_store` is a relative path"
        ):
            db.apply(llm, force=True)
        assert db.show("LLM") == []
    finally:
        CFG.artifact_store = old


def test_in_process_database_is_refused(db, tiny_model_dir, ray_tmp):
    from superduper_transformers.launch.ray_settings import RayConfigError

    llm = fixtures.make_llm(db, tiny_model_dir, ray_configs=ray_configs(ray_tmp))
    with pytest.raises(RayConfigError, match=r"`mongomock://.*` lives inside this process"):
        db.apply(llm, force=True)
    assert db.show("LLM") == []


def test_unreachable_address_fails_fast_and_writes_nothing(sqlite_db, tiny_model_dir):
    from superduper_transformers.launch.ray_settings import RayConfigError

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    llm = fixtures.make_llm(sqlite_db, tiny_model_dir, ray_configs=ray_configs(None, address=address))
    start = time.time()
    with pytest.raises(
        RayConfigError, match=rf"`ray_configs\['address'\]`='{address}': no Ray cluster answers"
    ):
        sqlite_db.apply(llm, force=True)
    assert time.time() - start < 60
    assert sqlite_db.show("LLM") == []
    assert list_checkpoints(sqlite_db, "tiny") == []


def test_local_only_settings_with_an_address_are_an_error():
    from superduper_transformers.launch.ray_settings import RayConfigError, check_ray_configs

    with pytest.raises(RayConfigError, match="both `address` and `temp_dir`"):
        check_ray_configs({"scaling_config": {}, "address": "10.0.0.5:6379", "temp_dir": "/tmp/x"})
    with pytest.raises(RayConfigError, match="not `host:port`"):
        from superduper_transformers.launch.ray_settings import check_address

        check_address("my-cluster")


def test_the_local_rays_default_folder_is_per_user(tmp_path, monkeypatch):
    """One user's Ray folder neither blocks nor serves another's (Ray itself is not started)."""
    from superduper_transformers.launch import ray_train as rt
    from superduper_transformers.launch.ray_settings import RayConfigError

    started = []
    fake_ray = types.SimpleNamespace(
        is_initialized=lambda: False, init=lambda **kw: started.append(kw["_temp_dir"]), shutdown=lambda: None
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    uid = os.getuid()
    (tmp_path / "superduper_ray").mkdir(mode=0o755)  # what another user's training left before
    (tmp_path / f"superduper_ray_{uid + 1}").mkdir(mode=0o700)
    with rt.ray_session({"scaling_config": {}}, {}):
        pass
    assert started == [str(tmp_path / f"superduper_ray_{uid}")]
    assert os.stat(started[0]).st_mode & 0o777 == 0o700
    # A folder under this user's name that someone else created first is refused.
    monkeypatch.setattr(os, "getuid", lambda: uid + 2)
    os.mkdir(tmp_path / f"superduper_ray_{uid + 2}")  # owned by `uid`, not by `uid + 2`
    with pytest.raises(
        RayConfigError, match=rf"superduper_ray_{uid + 2} belongs to another user \(uid {uid}\)"
    ):
        with rt.ray_session({"scaling_config": {}}, {}):
            pass
    assert len(started) == 1


def test_workers_get_an_offline_environment_and_the_artifact_store(sqlite_db, artifact_store, monkeypatch):
    from superduper_transformers.launch.ray_train import worker_env

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("PYTHONPATH", REPO)
    env = worker_env(sqlite_db)
    assert env["SUPERDUPER_ARTIFACT_STORE"] == f"filesystem://{artifact_store}"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PYTHONPATH"] == REPO


def test_ray_configs_survive_the_database(db):
    """Stored in the db, Ray's config dataclasses come back as dicts; training rebuilds them."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from superduper_transformers import LLMTrainer
    from superduper_transformers.launch.ray_settings import ray_config_objects

    run = RunConfig(
        name="run",
        storage_path="/shared/ray_results",
        failure_config=FailureConfig(max_failures=3),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )
    configs = {"scaling_config": ScalingConfig(num_workers=3), "run_config": run}
    db.apply(LLMTrainer("t", key="x", select=db["facts"].select(), ray_configs=configs), force=True)
    stored = db.load("LLMTrainer", "t")
    stored.setup()
    scaling, run = ray_config_objects(stored.ray_configs)
    assert (scaling.num_workers, scaling.use_gpu) == (3, False)
    assert (run.name, run.storage_path) == ("run", "/shared/ray_results")
    assert (run.failure_config.max_failures, run.checkpoint_config.num_to_keep) == (3, 2)
