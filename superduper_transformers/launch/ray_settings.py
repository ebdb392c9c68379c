"""``ray_configs`` -> checked Ray settings, before any Ray process starts.

Every problem that can be seen from the driver (missing ``scaling_config``, unknown
keys, a database or artifact store the workers cannot reach, an address where no
cluster answers) is reported at once, before the apply writes anything.
"""

from __future__ import annotations

import dataclasses as dc
import os
import socket
import typing as t

from superduper_transformers.settings import redact_uri, secret_issues

if t.TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer

#: Keys of ``ray_configs`` and what each is for.
RAY_CONFIG_KEYS = {
    "scaling_config": "a ray.train.ScalingConfig (required), e.g. ScalingConfig(num_workers=2)",
    "run_config": "a ray.train.RunConfig: storage_path, checkpoint_config, failure_config",
    "address": "the address of a running Ray cluster; without it a local Ray is started",
    "temp_dir": "folder of the local Ray's temporary files and logs",
    "num_cpus": "CPUs of the local Ray (default: all of this machine)",
    "runtime_env": "extra Ray runtime_env; its env_vars win over the plugin's",
}
#: Seconds to wait for a cluster address to accept a connection.
CONNECT_TIMEOUT_S = 10.0
_PLAIN = (type(None), bool, int, float, str)


class RayConfigError(ValueError):
    """Invalid ``ray_configs`` or a set-up the workers cannot use; the message has the fix."""


# -- plain data -------------------------------------------------------------
def plain_ray_configs(ray_configs: t.Any) -> t.Optional[t.Dict[str, t.Any]]:
    """``ray_configs`` as plain JSON data: Ray's dataclasses become dicts of their set fields.

    The trainer stores ``ray_configs`` in the db as JSON, never pickled: unpickling a
    stored blob runs whatever code it names, and anyone who can write the artifact
    store could plant one. :func:`ray_config_objects` rebuilds the Ray objects on use.

    :param ray_configs: A dict of ``scaling_config`` (``ScalingConfig`` or dict),
        ``run_config`` (``RunConfig`` or dict), ``address``, ``temp_dir``, ``num_cpus``,
        ``runtime_env``.
    :raises RayConfigError: naming the key of a value that is not plain data.
    """
    if ray_configs is None:
        return None
    if not isinstance(ray_configs, dict):
        raise RayConfigError(
            f"`ray_configs` must be a dict with a `scaling_config`, got {type(ray_configs).__name__}."
        )
    issues: t.List[str] = []
    out = {k: _plain(v, f"ray_configs['{k}']", issues) for k, v in ray_configs.items()}
    if issues:
        raise RayConfigError(
            "`ray_configs` is stored in the database as JSON (never pickled), so it must hold "
            "plain data:\n" + "\n".join(f"- {i}" for i in issues)
        )
    return out


def _plain(value: t.Any, where: str, issues: t.List[str]) -> t.Any:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]", issues) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                issues.append(f"`{where}` has a key {k!r} that is not a string.")
                continue
            out[k] = _plain(v, f"{where}['{k}']", issues)
        return out
    if dc.is_dataclass(value) and not isinstance(value, type):
        fields = {}
        for f in dc.fields(value):
            v = getattr(value, f.name)
            if not f.init or _is_default(f, v):
                continue  # only what the user set travels (and Ray's deprecation sentinels do not)
            fields[f.name] = _plain(v, f"{where}.{f.name}", issues)
        return fields
    issues.append(
        f"`{where}` is a {type(value).__name__}, which is not plain data (str, number, bool, "
        "None, list, dict or a Ray config dataclass of those). Give its settings as plain "
        "values, e.g. a `storage_path` string instead of a filesystem object."
    )
    return None


def _is_default(field: dc.Field, value: t.Any) -> bool:
    if field.default is not dc.MISSING:
        default = field.default
    elif field.default_factory is not dc.MISSING:  # type: ignore[misc]
        default = field.default_factory()  # type: ignore[misc]
    else:
        return False
    try:
        return bool(value == default) or (isinstance(value, str) and value == "DEPRECATED")
    except Exception:  # objects whose == raises or is ambiguous
        return False


# -- checks ---------------------------------------------------------------
def check_ray_configs(ray_configs: t.Any, db: t.Optional[Datalayer] = None) -> None:
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
    issues += secret_env_issues(ray_configs)
    if db is not None:
        issues += _shared_storage_issues(db)
    if issues:
        raise RayConfigError("Invalid Ray set-up:\n" + "\n".join(f"- {i}" for i in issues))


def secret_env_issues(ray_configs: t.Any) -> t.List[str]:
    """One message per credential in ``ray_configs['runtime_env']['env_vars']`` (never its value)."""
    runtime_env = ray_configs.get("runtime_env") if isinstance(ray_configs, dict) else None
    env = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    if not isinstance(env, dict):
        return []
    return secret_issues(
        env,
        "ray_configs['runtime_env']['env_vars']",
        fix="set it in the environment of the Ray cluster instead (`HF_TOKEN=... ray start ...`; "
        "a local Ray started by the plugin inherits this process's environment)",
    )


def check_ray_setup(ray_configs: t.Any, db: t.Optional[Datalayer] = None):
    """Every check that can run before Ray starts: the settings, the shared storage, the address.

    Called by ``train`` and, before an apply writes anything, by the trainer's preflight.

    :param ray_configs: The ``ray_configs`` of the trainer or of ``train``.
    :param db: The datalayer the workers will write to (None: not checked).
    :return: ``(ray_configs as a dict, ScalingConfig, RunConfig or None)``.
    :raises RayConfigError: naming the field, the value received and the fix.
    """
    from superduper_transformers._optional import require

    require("ray", "ray", "Training on Ray (`ray_configs`)")
    check_ray_configs(ray_configs, db)
    scaling, run = ray_config_objects(ray_configs)
    if ray_configs.get("address"):
        check_address(ray_configs["address"])
    return ray_configs, scaling, run


def _shared_storage_issues(db: Datalayer) -> t.List[str]:
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
    shown = redact_uri(backend)
    if backend.startswith("mongomock://"):
        issues.append(
            f"The database `{shown}` lives inside this process; Ray workers cannot write to it. "
            "Use a database server (`mongodb://...`) or a SQLite file (`sqlite:////abs/path.db`)."
        )
    elif backend.startswith("sqlite://") and not backend.startswith("sqlite:////"):
        issues.append(
            f"The database `{shown}` is a relative SQLite path: use `sqlite:////abs/path.db` "
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
