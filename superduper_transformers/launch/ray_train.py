"""The Ray Train path: a ``TrainJob`` run on every worker of a ``TorchTrainer``.

The driver never pickles the datalayer. Workers receive the training settings, their
shard of the rows (Ray Data, see ``ray_data``; or a pickled ``datasets.Dataset``),
and the serialized db config; rank 0 rebuilds the
datalayer from that config (``LLMCallback(cfg=...)``) and writes the checkpoints.
Ray is imported only inside these functions: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import getpass
import os
import tempfile
import time
import typing as t
import uuid

from superduper import logging

from superduper_transformers.hf.data import is_ray_dataset
from superduper_transformers.hf.job import TrainJob
from superduper_transformers.launch.ray_data import RowSource, shard_dataset, to_ray_dataset, use_own_shard
from superduper_transformers.launch.ray_settings import RayConfigError, check_ray_setup  # noqa: F401
from superduper_transformers.settings import Secret

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Environment the workers need, taken from the driver when set: offline hub,
#: quiet tokenizers, threads per worker, import path.
WORKER_ENV_VARS = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HOME",
    "TOKENIZERS_PARALLELISM",
    "OMP_NUM_THREADS",
    "PYTHONPATH",
)


def default_temp_dir() -> str:
    """Where a local Ray keeps its files unless ``ray_configs['temp_dir']`` says otherwise.

    One folder per user (``superduper_ray_<uid>`` in the system temp folder): a shared
    name would let the first user's folder block everyone else's Ray. Short on purpose:
    Ray's unix sockets live below it (107-character limit).
    """
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    return os.path.join(tempfile.gettempdir(), f"superduper_ray_{user}")


def own_temp_dir(path: str) -> str:
    """``path`` (the default temp folder) created owner-only (0o700) when missing;
    refused when another user owns it (they could have created it first, to read Ray's files).

    :raises RayConfigError: naming the folder, its owner and the fix.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    owner = os.stat(path).st_uid
    if hasattr(os, "getuid") and owner != os.getuid():
        raise RayConfigError(
            f"The local Ray's folder {path} belongs to another user (uid {owner}), who could "
            "read or replace its files: remove it, or set `ray_configs['temp_dir']` to a folder "
            "of your own."
        )
    return path


def worker_env(db: t.Optional[Datalayer]) -> t.Dict[str, str]:
    """Environment variables for every worker (Ray's ``runtime_env['env_vars']``).

    :param db: The datalayer (its artifact store becomes ``SUPERDUPER_ARTIFACT_STORE``).
    """
    env = {k: os.environ[k] for k in WORKER_ENV_VARS if k in os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")  # workers never reach for the hub on their own
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_NUM_THREADS", "1")
    if db is not None:
        env["SUPERDUPER_ARTIFACT_STORE"] = db.cfg.artifact_store
    return env


# -- driver ---------------------------------------------------------------
@contextlib.contextmanager
def ray_session(ray_configs: t.Dict[str, t.Any], env: t.Dict[str, str]):
    """Connect to ``ray_configs['address']`` or start a local Ray; shut it down after.

    A Ray already initialised in this process (by the user) is used as it is and
    left running.
    """
    import ray

    if ray.is_initialized():
        logging.warn("Ray is already initialised in this process: training on it as it is.")
        yield
        return
    user_env = dict(ray_configs.get("runtime_env") or {})
    runtime_env = {**user_env, "env_vars": {**env, **(user_env.get("env_vars") or {})}}
    address = ray_configs.get("address")
    start = time.time()
    if address:
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except ConnectionError as e:
            ray.shutdown()
            raise RayConfigError(
                f"`ray_configs['address']`={address!r}: a server answers but Ray could not "
                f"connect ({e}). Ray clusters check a token by default: set RAY_AUTH_MODE=token "
                "in this process and make the cluster's token available (~/.ray/auth_token, "
                "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN); check that the port is the head's GCS "
                "port (`ray start --head --port`)."
            ) from e
        logging.info(f"Connected to the Ray cluster at {address} in {time.time() - start:.1f}s")
    else:
        given = ray_configs.get("temp_dir")
        temp_dir = os.path.abspath(given) if given else own_temp_dir(default_temp_dir())
        ray.init(
            num_cpus=ray_configs.get("num_cpus"),
            _temp_dir=temp_dir,
            include_dashboard=False,
            runtime_env=runtime_env,
        )
        logging.info(f"Started a local Ray in {time.time() - start:.1f}s; its files are in {temp_dir}")
    try:
        yield
    finally:
        ray.shutdown()


def default_run_config(training_args, identifier: str, experiment_id: str):
    """Ray's results and checkpoints beside the HF output folder, one Ray checkpoint per HF save."""
    from ray.train import CheckpointConfig, RunConfig

    return RunConfig(
        name=f"{identifier}-{experiment_id}",
        storage_path=os.path.join(os.path.abspath(training_args.output_dir), "ray_results"),
        checkpoint_config=CheckpointConfig(num_to_keep=training_args.save_total_limit),
    )


def ray_train(
    job: TrainJob,
    db: t.Optional[Datalayer] = None,
    llm: t.Any = None,
    ray_configs: t.Optional[t.Dict[str, t.Any]] = None,
):
    """Train ``job`` on Ray Train's ``TorchTrainer``: the job runs on every worker.

    With ``log_to_db`` on, rank 0 records every checkpoint in the db during the run;
    with it off, the final Ray checkpoint is registered at the end
    (:func:`handle_ray_results`).

    :param job: The training (pickled to the workers; its callbacks must pickle).
    :param db: The datalayer to record the run in (not sent to the workers).
    :param llm: The ``LLM`` being trained; it must already be in ``db``.
    :param ray_configs: ``scaling_config`` (required), ``run_config``, ``address``,
        ``temp_dir``, ``num_cpus``, ``runtime_env``.
    :return: The ``ray.train.Result``.
    """
    recording = db is not None and llm is not None
    ray_configs, scaling_config, run_config = check_ray_setup(ray_configs, db if recording else None)
    from ray.train.torch import TorchTrainer

    log_to_db = job.settings.log_to_db if job.settings is not None else True
    # Made once here, so that restarted workers register under the same run.
    experiment_id = job.experiment_id or uuid.uuid4().hex[:8]
    job = dc.replace(job, experiment_id=experiment_id)
    if recording and log_to_db and llm.identifier not in db.show("LLM"):
        raise RayConfigError(
            f"LLM `{llm.identifier}` is not in the database: Ray workers load it by identifier. "
            "Apply it first (`db.apply(llm, force=True)`), or pass `db=None`."
        )
    # Ray records train_loop_config as run metadata (dashboard, export events): the
    # datalayer config (its URI may hold a password) travels as a redacted `Secret`.
    loop_config = dict(
        job=job,
        cfg=Secret(db.cfg.dict()) if recording and log_to_db else None,
        identifier=llm.identifier if llm is not None else None,
    )
    identifier = llm.identifier if llm is not None else "llm"
    run_config = run_config or default_run_config(job.training_args, identifier, experiment_id)
    env = worker_env(db if recording else None)
    ray_data = isinstance(job.train_dataset, RowSource) or is_ray_dataset(job.train_dataset)
    with ray_session(ray_configs, env):
        datasets = None
        if ray_data:
            # The rows reach the workers through Ray Data, each its own shard: the job
            # (pickled into every worker) carries none of them.
            train = job.train_dataset
            datasets = {"train": to_ray_dataset(train) if isinstance(train, RowSource) else train}
            job = dc.replace(job, train_dataset=None)
            logging.info(f"Training data on Ray Data: {train!r}")
        loop_config["job"] = dc.replace(
            job,
            train_dataset=_in_memory(job.train_dataset),
            eval_datasets=_in_memory(job.eval_datasets),
        )
        loop_config["ray_data"] = ray_data
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=scaling_config,
            run_config=run_config,
            datasets=datasets,
        )
        result = trainer.fit()
    logging.info(f"Ray run {experiment_id} finished; results in {result.path}")
    if recording and not log_to_db:
        return handle_ray_results(
            db,
            llm,
            result,
            experiment_id=experiment_id,
            data_fingerprint=job.data_fingerprint,
            load_best=bool(getattr(job.training_args, "load_best_model_at_end", False)),
        )
    if recording:
        _refresh(db, llm)
    return result


def _in_memory(ds):
    """A memory-mapped ``datasets.Dataset`` (a file of this machine's cache) loaded into
    memory, so that it pickles with its rows to workers on other machines; eval sets
    are small. Dicts of them likewise; anything else as it is."""
    if isinstance(ds, dict):
        return {name: _in_memory(d) for name, d in ds.items()}
    if getattr(ds, "cache_files", None):
        from datasets import Dataset

        return Dataset.from_dict(ds.to_dict(), features=ds.features)
    return ds


def _refresh(db: Datalayer, llm: t.Any) -> None:
    """Copy what rank 0 stored (adapter, metrics, generations) into the driver's ``llm``.

    Without it a later ``llm.save()`` in this process would write back the stale copy.
    """
    stored = db.load("LLM", llm.identifier)
    llm.adapter_id = stored.adapter_id
    llm.metric_values = stored.metric_values  # e.g. the generations recorded at evaluations
    if llm.trainer is not None and stored.trainer is not None:
        llm.trainer.metric_values = stored.trainer.metric_values


# -- workers --------------------------------------------------------------
def train_loop_per_worker(loop: t.Dict[str, t.Any]) -> None:
    """Run on each Ray worker: resume from the db's latest verified checkpoint, train, report.

    :param loop: ``train_loop_config`` built by :func:`ray_train`.
    """
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from superduper_transformers.hf.train import run_job
    from superduper_transformers.launch.callback import SaveTheLastStep, recording_callbacks

    job: TrainJob = loop["job"]
    callbacks = []
    if loop["cfg"] is not None:
        callbacks = recording_callbacks(job, loop["identifier"], cfg=loop["cfg"].reveal())
    # Ray's report last: a worker dying before it leaves the db one checkpoint ahead of
    # Ray; the restarted run re-saves that step and its re-registration is a no-op.
    callbacks += [*job.callbacks, SaveTheLastStep(), RayTrainReportCallback()]
    # The driver's args carry its cached device set-up (one process, rank 0); rebuilt
    # here they see this worker's process group, so only rank 0 saves and logs.
    job = dc.replace(
        job,
        training_args=dc.replace(job.training_args),
        callbacks=callbacks,
        trainer_prepare_func=prepare_trainer,
        local_rank=ray.train.get_context().get_local_rank(),
    )
    if loop.get("ray_data"):
        # This worker's part of the rows (Ray Data); an iterable, so resuming cannot skip
        # the batches already seen: it goes on with fresh ones (`ignore_data_skip`).
        shard = ray.train.get_dataset_shard("train")
        job = dc.replace(
            job,
            train_dataset=shard_dataset(shard, seed=job.training_args.seed),
            training_args=dc.replace(job.training_args, ignore_data_skip=True),
            trainer_prepare_func=lambda trainer: use_own_shard(prepare_trainer(trainer)),
        )
    with contextlib.ExitStack() as stack:
        resume_from = _resume_point(loop, job, stack)
        if resume_from is not None:
            job = dc.replace(job, resume_from_checkpoint=resume_from)
            logging.info(f"Resuming from {resume_from}")
        run_job(job)  # rank 0's LLMCallback marks its model in training: its saves are not re-applies


def _resume_point(loop: t.Dict[str, t.Any], job: TrainJob, stack: contextlib.ExitStack):
    """Where this (maybe restarted) worker resumes: the db's newest verified checkpoint.

    The db is the one source of truth, as for a local run: rank 0 registers each
    checkpoint before Ray hears of it, so after a crash the db may be a checkpoint
    ahead of Ray, and resuming from Ray's would train those steps twice. Without db
    logging (nothing registered during the run), Ray's latest checkpoint.
    """
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    if loop["cfg"] is not None and job.experiment_id:
        from superduper_transformers import resume as runs
        from superduper_transformers.store.datalayer import datalayer_from_config

        db = datalayer_from_config(loop["cfg"].reveal())
        try:
            ckpt = runs.latest_verified_checkpoint(db, loop["identifier"], job.experiment_id)
        finally:
            db.disconnect()
        if ckpt is not None:
            if ray.train.get_context().get_world_rank() == 0:
                # Also clears what the dead process left in output_dir past that step.
                return runs.fetch_checkpoint(ckpt, job.training_args.output_dir)
            # A private copy, verified: the bytes checked are the bytes loaded (the store's
            # folder sits under a parent superduper makes writable by all).
            return stack.enter_context(ckpt.verified_copy())
        return job.resume_from_checkpoint
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return job.resume_from_checkpoint
    folder = stack.enter_context(checkpoint.as_directory())
    return os.path.join(folder, RayTrainReportCallback.CHECKPOINT_NAME)


# -- results --------------------------------------------------------------
def handle_ray_results(
    db: t.Optional[Datalayer],
    llm: t.Any,
    results,
    experiment_id: t.Optional[str] = None,
    data_fingerprint: t.Optional[t.Dict[str, t.Any]] = None,
    load_best: bool = False,
):
    """Register the final checkpoint of a Ray run and point ``llm`` at it.

    The Ray checkpoint may live on a remote filesystem: it is downloaded first,
    then its files are copied into the artifact store.

    :param db: The datalayer (None: return the results untouched).
    :param llm: The trained ``LLM`` (None: return the results untouched).
    :param results: The ``ray.train.Result`` of ``TorchTrainer.fit()``.
    :param experiment_id: The run's identifier (default: the Ray run's name).
    :param data_fingerprint: The fingerprint of the run's training data (lineage).
    :param load_best: ``load_best_model_at_end`` of the run: point ``llm`` at the run's
        best checkpoint (when its folder is on this machine) instead of the last.
    :return: ``results``.
    """
    if db is None or llm is None:
        return results
    from superduper_transformers.launch.callback import register_final_checkpoint

    if results.checkpoint is None:
        raise RayConfigError(
            f"The Ray run at {results.path} reported no checkpoint, so nothing can be registered "
            f"for `{llm.identifier}`. Save at least once (`save_strategy='steps'` with `save_steps` "
            "<= `max_steps`, or `save_strategy='epoch'`)."
        )
    experiment_id = experiment_id or os.path.basename(str(results.path).rstrip("/"))
    with tempfile.TemporaryDirectory() as tmp:
        local = results.checkpoint.to_directory(os.path.join(tmp, "ray"))
        folder = os.path.join(local, "checkpoint")  # RayTrainReportCallback's layout
        register_final_checkpoint(
            db,
            llm,
            folder if os.path.isdir(folder) else local,
            experiment_id,
            data_fingerprint,
            load_best=load_best,
        )
    return results
