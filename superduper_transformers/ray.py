"""The Ray Train path: ``train_func`` on every worker of a ``TorchTrainer``.

The driver never pickles the datalayer. Workers receive the tokenized datasets,
the training settings and the serialized db config; rank 0 rebuilds the
datalayer from that config (``LLMCallback(cfg=...)``) and writes the checkpoints.
Ray is imported only inside these functions: it takes seconds to import.
"""

from __future__ import annotations

import contextlib
import dataclasses as dc
import json
import os
import socket
import tempfile
import time
import types
import typing as t
import uuid

from superduper import logging

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

    from superduper_transformers.model import LLM

#: Keys of ``ray_configs`` and what each is for.
RAY_CONFIG_KEYS = {
    "scaling_config": "a ray.train.ScalingConfig (required), e.g. ScalingConfig(num_workers=2)",
    "run_config": "a ray.train.RunConfig: storage_path, checkpoint_config, failure_config",
    "address": "the address of a running Ray cluster; without it a local Ray is started",
    "temp_dir": "folder of the local Ray's temporary files and logs",
    "num_cpus": "CPUs of the local Ray (default: all of this machine)",
    "runtime_env": "extra Ray runtime_env; its env_vars win over the plugin's",
}
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
#: Where a local Ray keeps its files unless ``ray_configs['temp_dir']`` says otherwise.
#: Short on purpose: Ray's unix sockets live below it (107-character limit).
DEFAULT_TEMP_DIR = os.path.join(tempfile.gettempdir(), "superduper_ray")
#: Seconds to wait for a cluster address to accept a connection.
CONNECT_TIMEOUT_S = 10.0


class RayConfigError(ValueError):
    """Invalid ``ray_configs`` or a set-up the workers cannot use; the message has the fix."""


# -- checks ---------------------------------------------------------------
def check_ray_configs(ray_configs: t.Any, db: t.Optional["Datalayer"] = None) -> None:
    """Check ``ray_configs`` (and that the workers can reach ``db``); one error listing every problem.

    :param ray_configs: The ``ray_configs`` of the trainer or of ``train``.
    :param db: The datalayer the workers will write to (None: not checked).
    :raises RayConfigError: naming each field, the value received and the fix.
    """
    issues: t.List[str] = []
    if not isinstance(ray_configs, dict):
        raise RayConfigError(
            f"`ray_configs` must be a dict with a `scaling_config`, got {type(ray_configs).__name__}."
        )
    if "scaling_config" not in ray_configs:
        issues.append(
            "`ray_configs` needs a `scaling_config` (a ray.train.ScalingConfig, e.g. "
            f"`ScalingConfig(num_workers=2)`), got keys {sorted(ray_configs)}."
        )
    for key in sorted(set(ray_configs) - set(RAY_CONFIG_KEYS)):
        known = ", ".join(f"`{k}` ({v})" for k, v in RAY_CONFIG_KEYS.items())
        issues.append(f"`ray_configs` has an unknown key `{key}`. Known keys: {known}.")
    for key in ("num_cpus", "temp_dir"):
        if ray_configs.get("address") and ray_configs.get(key) is not None:
            issues.append(
                f"`ray_configs` sets both `address` and `{key}`: `{key}` only applies to a local "
                f"Ray; set it where the cluster is started (`ray start --{key.replace('_', '-')}`)."
            )
    if db is not None:
        issues += _shared_storage_issues(db)
    if issues:
        raise RayConfigError("Invalid Ray set-up:\n" + "\n".join(f"- {i}" for i in issues))


def check_ray_setup(ray_configs: t.Any, db: t.Optional["Datalayer"] = None):
    """Every check that can run before Ray starts: the settings, the shared storage, the address.

    Called by ``train`` and, before an apply writes anything, by the trainer's preflight.

    :param ray_configs: The ``ray_configs`` of the trainer or of ``train``.
    :param db: The datalayer the workers will write to (None: not checked).
    :return: ``(ray_configs as a dict, ScalingConfig, RunConfig or None)``.
    :raises RayConfigError: naming the field, the value received and the fix.
    """
    from superduper_transformers._optional import require

    require("ray", "ray", "Training on Ray (`ray_configs`)")
    if hasattr(ray_configs, "unpack"):  # a trainer reloaded without setup(): a lazy Blob
        ray_configs = ray_configs.unpack()
    check_ray_configs(ray_configs, db)
    scaling, run = ray_config_objects(ray_configs)
    if ray_configs.get("address"):
        check_address(ray_configs["address"])
    return ray_configs, scaling, run


def _shared_storage_issues(db: "Datalayer") -> t.List[str]:
    """Ray workers are other processes: the db and the artifact store must be reachable from them."""
    issues = []
    store = db.cfg.artifact_store or ""
    path = store.split("://", 1)[-1] if store.startswith("filesystem://") else None
    if path is not None and not os.path.isabs(path):
        issues.append(
            f"The artifact store `{store}` is a relative path: Ray workers run in other folders "
            "and would write checkpoints elsewhere. Set an absolute path on a filesystem every "
            "worker sees, e.g. `CFG.artifact_store = 'filesystem:///shared/artifact_store'` or "
            "SUPERDUPER_ARTIFACT_STORE, before building the datalayer."
        )
    backend = db.cfg.data_backend or ""
    if backend.startswith("mongomock://"):
        issues.append(
            f"The database `{backend}` lives inside this process; Ray workers cannot write to it. "
            "Use a database server (`mongodb://...`) or a SQLite file (`sqlite:////abs/path.db`)."
        )
    elif backend.startswith("sqlite://") and not backend.startswith("sqlite:////"):
        issues.append(
            f"The database `{backend}` is a relative SQLite path: use `sqlite:////abs/path.db` "
            "so that every worker opens the same file."
        )
    return issues


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when nothing listens at a cluster address.

    ``ray.init`` retries an unreachable address for minutes; a TCP probe first
    turns a typo or a stopped cluster into an error at once.

    :param address: ``host:port`` (GCS) or ``ray://host:port`` (Ray Client); ``auto`` is not probed.
    :param timeout: Seconds to wait for the connection.
    """
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayConfigError(
            f"`ray_configs['address']`={address!r} is not `host:port` or `ray://host:port` "
            "(e.g. `10.0.0.5:6379`, the address printed by `ray start --head`)."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayConfigError(
            f"`ray_configs['address']`={address!r}: no Ray cluster answers there ({e}). "
            "Start one with `ray start --head --port <port>`, check the host and port, "
            "or remove `address` to train on a local Ray."
        ) from e


def worker_env(db: t.Optional["Datalayer"]) -> t.Dict[str, str]:
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


def worker_settings(config: t.Any) -> t.Optional[types.SimpleNamespace]:
    """The trainer's plain settings (LoRA, bits, ...) for the workers.

    The ``LLMTrainer`` itself holds a query bound to the datalayer; only its
    JSON-able fields travel.
    """
    if config is None:
        return None
    out = {}
    for f in dc.fields(config):
        value = getattr(config, f.name, None)
        if f.name in ("ray_configs", "select", "db"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[f.name] = value
    return types.SimpleNamespace(**out)


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
        temp_dir = os.path.abspath(ray_configs.get("temp_dir") or DEFAULT_TEMP_DIR)
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


def ray_config_objects(ray_configs: t.Dict[str, t.Any]):
    """``(ScalingConfig, RunConfig or None)`` from ``ray_configs``.

    Saving a trainer in the db turns these dataclasses into plain dicts (and users
    may write dicts directly): both forms are accepted.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    scaling = _as_dataclass(ScalingConfig, ray_configs["scaling_config"], "scaling_config")
    run = ray_configs.get("run_config")
    if isinstance(run, dict):
        run = dict(run)
        nested = (
            ("failure_config", FailureConfig),
            ("checkpoint_config", CheckpointConfig),
            ("logging_config", LoggingConfig),
        )
        for key, cls in nested:
            if isinstance(run.get(key), dict):
                run[key] = _as_dataclass(cls, run[key], f"run_config.{key}")
    if run is not None:
        run = _as_dataclass(RunConfig, run, "run_config")
    return scaling, run


def _as_dataclass(cls, value, field: str):
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise RayConfigError(
            f"`ray_configs['{field}']` must be a ray.train.{cls.__name__} or a dict of its "
            f"fields, got {type(value).__name__}."
        )
    names = {f.name for f in dc.fields(cls) if f.init}
    # superduper stores ray's deprecation sentinels too; only set fields travel back.
    return cls(**{k: v for k, v in value.items() if k in names and v != "DEPRECATED"})


def default_run_config(training_args, identifier: str, experiment_id: str):
    """Ray's results and checkpoints beside the HF output folder, one Ray checkpoint per HF save."""
    from ray.train import CheckpointConfig, RunConfig

    return RunConfig(
        name=f"{identifier}-{experiment_id}",
        storage_path=os.path.join(os.path.abspath(training_args.output_dir), "ray_results"),
        checkpoint_config=CheckpointConfig(num_to_keep=training_args.save_total_limit),
    )


def ray_train(
    training_args,
    train_dataset,
    eval_datasets,
    model_kwargs: t.Dict[str, t.Any],
    tokenizer_kwargs: t.Dict[str, t.Any],
    db: t.Optional["Datalayer"] = None,
    llm: t.Optional["LLM"] = None,
    ray_configs: t.Optional[t.Dict[str, t.Any]] = None,
    **kwargs,
):
    """Train on Ray Train's ``TorchTrainer``: ``train_func`` on every worker.

    With ``log_to_db`` on, rank 0 records every checkpoint in the db during the run;
    with it off, the final Ray checkpoint is registered at the end
    (:func:`handle_ray_results`).

    :param training_args: trl ``SFTConfig``.
    :param train_dataset: Tokenized training dataset (pickled to the workers).
    :param eval_datasets: A tokenized dataset, a dict name -> dataset, or None.
    :param model_kwargs: ``from_pretrained`` keywords of the base model.
    :param tokenizer_kwargs: ``from_pretrained`` keywords of the tokenizer.
    :param db: The datalayer to record the run in (not sent to the workers).
    :param llm: The ``LLM`` being trained; it must already be in ``db``.
    :param ray_configs: ``scaling_config`` (required), ``run_config``, ``address``,
        ``temp_dir``, ``num_cpus``, ``runtime_env``.
    :param kwargs: ``config`` (the ``LLMTrainer``), ``experiment_id``, ``callbacks``
        (picklable ``TrainerCallback`` instances), and keywords for :func:`train_func`.
    :return: The ``ray.train.Result``.
    """
    recording = db is not None and llm is not None
    ray_configs, scaling_config, run_config = check_ray_setup(ray_configs, db if recording else None)
    from ray.train.torch import TorchTrainer

    config = kwargs.pop("config", None)
    log_to_db = config.log_to_db if config is not None else True
    # Made once here, so that restarted workers register under the same run.
    experiment_id = kwargs.pop("experiment_id", None) or uuid.uuid4().hex[:8]
    if recording and log_to_db and llm.identifier not in db.show("LLM"):
        raise RayConfigError(
            f"LLM `{llm.identifier}` is not in the database: Ray workers load it by identifier. "
            "Apply it first (`db.apply(llm, force=True)`), or pass `db=None`."
        )
    loop_config = dict(
        args=(training_args, train_dataset, eval_datasets, model_kwargs, tokenizer_kwargs),
        cfg=db.cfg.dict() if recording and log_to_db else None,
        identifier=llm.identifier if llm is not None else None,
        experiment_id=experiment_id,
        callbacks=list(kwargs.pop("callbacks", None) or []),
        kwargs={**kwargs, "config": worker_settings(config)},
    )
    identifier = llm.identifier if llm is not None else "llm"
    run_config = run_config or default_run_config(training_args, identifier, experiment_id)
    env = worker_env(db if recording else None)
    with ray_session(ray_configs, env):
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=scaling_config,
            run_config=run_config,
        )
        result = trainer.fit()
    logging.info(f"Ray run {experiment_id} finished; results in {result.path}")
    if recording and not log_to_db:
        return handle_ray_results(db, llm, result, experiment_id=experiment_id)
    if recording:
        _refresh(db, llm)
    return result


def _refresh(db: "Datalayer", llm: "LLM") -> None:
    """Copy what rank 0 stored (adapter, metrics) into the driver's ``llm``.

    Without it a later ``llm.save()`` in this process would write back the stale copy.
    """
    stored = db.load("LLM", llm.identifier)
    llm.adapter_id = stored.adapter_id
    if llm.trainer is not None and stored.trainer is not None:
        llm.trainer.metric_values = stored.trainer.metric_values


# -- workers --------------------------------------------------------------
def train_loop_per_worker(loop: t.Dict[str, t.Any]) -> None:
    """Run on each Ray worker: resume from Ray's latest checkpoint, train, report.

    :param loop: ``train_loop_config`` built by :func:`ray_train`.
    """
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from superduper_transformers.callback import LLMCallback
    from superduper_transformers.local import train_func

    callbacks = []
    if loop["cfg"] is not None:
        callbacks.append(
            LLMCallback(cfg=loop["cfg"], identifier=loop["identifier"], experiment_id=loop["experiment_id"])
        )
    # Ray's report last: a worker dying before it leaves the db one checkpoint ahead of
    # Ray; the restarted run re-saves that step and its re-registration is a no-op.
    callbacks += [*loop["callbacks"], RayTrainReportCallback()]
    training_args, *data = loop["args"]
    # The driver's args carry its cached device set-up (one process, rank 0); rebuilt
    # here they see this worker's process group, so only rank 0 saves and logs.
    training_args = dc.replace(training_args)
    kwargs = dict(loop["kwargs"])
    kwargs["local_rank"] = ray.train.get_context().get_local_rank()
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as folder:
        if folder is not None:
            # A restart after a failure: continue where Ray's last checkpoint left off.
            kwargs["resume_from_checkpoint"] = os.path.join(folder, RayTrainReportCallback.CHECKPOINT_NAME)
            logging.info(f"Resuming from {kwargs['resume_from_checkpoint']}")
        train_func(training_args, *data, trainer_prepare_func=prepare_trainer, callbacks=callbacks, **kwargs)


# -- results --------------------------------------------------------------
def handle_ray_results(
    db: t.Optional["Datalayer"], llm: t.Optional["LLM"], results, experiment_id: t.Optional[str] = None
):
    """Register the final checkpoint of a Ray run and point ``llm`` at it.

    The Ray checkpoint may live on a remote filesystem: it is downloaded first,
    then its files are copied into the artifact store.

    :param db: The datalayer (None: return the results untouched).
    :param llm: The trained ``LLM`` (None: return the results untouched).
    :param results: The ``ray.train.Result`` of ``TorchTrainer.fit()``.
    :param experiment_id: The run's identifier (default: the Ray run's name).
    :return: ``results``.
    """
    if db is None or llm is None:
        return results
    from superduper_transformers import checkpoint as ckpts
    from superduper_transformers.callback import latest_metrics

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
        folder = folder if os.path.isdir(folder) else local
        with open(os.path.join(folder, "trainer_state.json")) as f:
            state = json.load(f)
        ckpt = ckpts.register_checkpoint(
            db,
            model=llm.identifier,
            experiment_id=experiment_id,
            path=folder,
            step=state["global_step"],
            metrics=latest_metrics(state.get("log_history", []), state["global_step"]),
        )
    llm.adapter_id = ckpt
    llm.save()
    return results
