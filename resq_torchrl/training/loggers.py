"""The run's logger: one of torchrl's loggers (``torchrl.record.loggers``), chosen by
``cfg.logger``, with the package each one needs named in the error when it is missing.

Where each one writes, under the run's ``out_dir`` (nothing goes to the network by default):

- ``csv``: ``out_dir/<experiment_name>/scalars/<key>.csv`` (``step,value`` lines);
- ``tensorboard``: event files in ``out_dir/<experiment_name>/``;
- ``wandb``: an offline run in ``out_dir/wandb/offline-run-*/`` (``wandb sync`` uploads it),
  unless ``wandb_offline=false``;
- ``mlflow``: a SQLite tracking store ``out_dir/mlflow.db`` (mlflow 3 refuses its old
  ``./mlruns`` file store), unless ``mlflow_tracking_uri`` names another store or a server.

The run's configuration is logged once, as plain data, through the logger's ``log_hparams``.
"""

from __future__ import annotations

import atexit
import contextlib
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrl.record.loggers import Logger, get_logger
from torchrl.record.loggers.mlflow import MLFlowLogger

from resq_torchrl.errors import ConfigError, require
from resq_torchrl.training.evallog import read_eval_rows

#: torchrl loggers a run can write to, and (module, package extra) each one needs
LOGGER_EXTRAS: dict[str, tuple[str, str] | None] = {
    "csv": None,
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}
#: the wandb project of a run when ``cfg.wandb_project`` is not set
WANDB_PROJECT = "resq_torchrl"
#: the SQLite tracking store of a run when ``cfg.mlflow_tracking_uri`` is not set
MLFLOW_DB = "mlflow.db"
#: loggers made by make_logger and not closed yet (closed by the next make_logger, by
#: close_logger, or when the process exits)
_OPEN: list[Logger] = []


def check_logger(name: str) -> None:
    """Raise a :class:`ConfigError` for a logger not in :data:`LOGGER_EXTRAS`, and a
    :class:`MissingDependencyError` naming the extra when its package is not installed."""
    if name not in LOGGER_EXTRAS:
        raise ConfigError(f"unknown logger {name!r}; choose one of: {', '.join(LOGGER_EXTRAS)}")
    if LOGGER_EXTRAS[name] is not None:
        module, extra = LOGGER_EXTRAS[name]
        require(module, extra, f"logger={name}")


def make_logger(cfg: Mapping, out_dir: Path) -> Logger:
    """The logger of a run writing under ``out_dir`` (see the module's docstring), with the
    run's configuration ``cfg`` logged as its hyperparameters.

    Close it with :func:`close_logger` (flushed, the wandb/mlflow run ended). One left open
    is closed by the next ``make_logger`` of the process (a run's logger outlives its run
    otherwise: mlflow and wandb then log the next run of a multirun into the previous one)
    or, at the latest, when the process exits.

    Settings read from ``cfg``: ``logger``, ``experiment_name``; ``wandb_offline`` (default
    true), ``wandb_project`` (default :data:`WANDB_PROJECT`); ``mlflow_tracking_uri`` (default
    ``sqlite:///<out_dir>/mlflow.db``).
    """
    name = cfg["logger"]
    check_logger(name)
    for previous in list(_OPEN):
        close_logger(previous)
    with _global_rng_kept():  # mlflow names its run with python's global random
        logger = _new_logger(cfg, Path(out_dir))
        _OPEN.append(logger)
        logger.log_hparams(hparams(cfg, nested=name == "wandb"))  # wandb keeps the nesting
    # run before wandb's and mlflow's own exit hooks (last registered, first run)
    atexit.unregister(close_open_loggers)
    atexit.register(close_open_loggers)
    return logger


def _new_logger(cfg: Mapping, out_dir: Path) -> Logger:
    """torchrl's logger ``cfg["logger"]``, writing under ``out_dir``."""
    name = cfg["logger"]
    exp_name = str(cfg["experiment_name"])
    if name == "wandb":
        offline = bool(cfg.get("wandb_offline", True))
        wandb_kwargs = {
            "offline": offline,
            "project": str(cfg.get("wandb_project") or WANDB_PROJECT),
            # torchrl would store the package list in the run config's "env", where the
            # run's own env settings go; wandb saves requirements.txt with the run anyway
            "log_env_packages": False,
        }
        if offline:  # explicit, rather than through the WANDB_MODE torchrl sets
            wandb_kwargs["mode"] = "offline"
        # absolute: wandb's service process, started once per Python process, resolves a
        # relative directory against its own working directory, not the caller's current one
        # (it wrote a run's output.log under the repository while the run was elsewhere)
        logger = get_logger(name, str(out_dir.resolve()), exp_name, wandb_kwargs=wandb_kwargs)
    elif name == "mlflow":
        # torchrl's get_logger points mlflow at a file store, which mlflow 3 refuses
        uri = cfg.get("mlflow_tracking_uri")
        local = not uri
        if local:
            out_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(out_dir / MLFLOW_DB).resolve()}"
        from mlflow.exceptions import MlflowException

        try:
            logger = MLFlowLogger(
                exp_name,
                tracking_uri=str(uri),
                # artifacts (none logged today) next to the store rather than in ./mlruns
                artifact_location=(out_dir / "mlartifacts").resolve().as_uri() if local else None,
            )
        except MlflowException as err:  # e.g. a file store, which mlflow 3 refuses
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"logger=mlflow cannot use mlflow_tracking_uri={uri}: {first} (leave it unset "
                "for a SQLite store in output_dir, or give sqlite:///PATH or a server's URL)"
            ) from err
    else:  # csv, tensorboard: out_dir/<experiment_name>/
        logger = get_logger(name, str(out_dir), exp_name)
    return logger


@contextlib.contextmanager
def _global_rng_kept():
    """Leave python's, numpy's and torch's (CPU) global random streams as they were: making a
    logger must not change the run it logs."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def close_logger(logger: Logger, failed: bool = False) -> None:
    """Flush and close ``logger``: the tensorboard event file, the wandb run and the mlflow
    run are complete afterwards; with ``failed`` (a run stopped by an error) the wandb and
    mlflow runs are marked failed instead of finished. Closing it twice does nothing."""
    if logger in _OPEN:
        _OPEN.remove(logger)
    if failed and type(logger).__name__ == "WandbLogger":
        with contextlib.suppress(Exception):  # already finished
            logger.experiment.finish(exit_code=1)
    logger.shutdown()  # flush, then finish (wandb) or close (tensorboard); idempotent
    if isinstance(logger, MLFlowLogger):
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == logger.experiment.info.run_id:
            mlflow.end_run(status="FAILED" if failed else "FINISHED")


def resume_logger(logger: Logger, frames: int) -> None:
    """Prepare ``logger`` for a run resumed at ``frames``: what the interrupted run logged
    after its checkpoint is logged again by the resumed one, so it is dropped first.

    - ``csv``: lines of ``step > frames`` are removed from every ``scalars/**.csv``, and a
      last line the kill cut short (no newline) with them (atomic rewrites; the files are
      opened only at the first scalar logged afterwards);
    - ``tensorboard``: the event writer is reopened with ``purge_step=frames + 1``, which
      makes TensorBoard discard the earlier events past the checkpoint;
    - ``wandb``, ``mlflow``: a resumed run logs into a new run of theirs (said on stdout);
      the interrupted run keeps its scalars up to where it stopped.
    """
    name = type(logger).__name__
    if name == "CSVLogger":
        for path in Path(logger.experiment.log_dir, "scalars").rglob("*.csv"):
            text = path.read_text()
            lines = text.split("\n")
            lines.pop()  # "" after a final newline; else a line cut short by the kill
            kept = [line for line in lines if _csv_step(line) <= frames]
            if len(kept) < len(lines) or not text.endswith("\n"):
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                tmp.replace(path)
    elif name == "TensorboardLogger":
        from torch.utils.tensorboard import SummaryWriter

        log_dir = logger.experiment.log_dir
        logger.experiment.close()
        logger.experiment = SummaryWriter(log_dir=log_dir, purge_step=frames + 1)
    elif name in ("WandbLogger", "MLFlowLogger"):
        print(
            f"note: logger={name[: -len('Logger')].lower()} logs this resumed run as a new run "
            f"(the interrupted one keeps all it logged, past the checkpoint at {frames} frames "
            "too)",
            flush=True,
        )


def _csv_step(line: str) -> float:
    """The step of a ``step,value`` line; a line without one (a header) counts as step
    ``-inf``: kept."""
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return float("-inf")


def close_open_loggers() -> None:
    """Close every logger :func:`make_logger` made that is still open (what happens when
    the process exits)."""
    for logger in list(_OPEN):
        close_logger(logger)


def hparams(cfg: Mapping, nested: bool = False) -> dict[str, Any]:
    """``cfg`` as plain data every logger takes: numbers, strings and booleans, with other
    leaves (``None``, lists) as their text; flattened to dotted keys (``agent.hidden_dim``)
    unless ``nested``.

    >>> hparams({"lr": 0.001, "agent": {"type": "gru"}, "resume": None, "dims": [1, 2]})
    {'lr': 0.001, 'agent.type': 'gru', 'resume': 'None', 'dims': '[1, 2]'}
    """
    cfg = _plain(cfg)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, Mapping):
            inner = hparams(value, nested)
            if nested:
                out[str(key)] = inner
            else:
                out.update({f"{key}.{k}": v for k, v in inner.items()})
        elif isinstance(value, (bool, int, float, str)):
            out[str(key)] = value
        else:
            out[str(key)] = str(value)
    return out


def _plain(cfg: Any) -> Any:
    """An omegaconf ``DictConfig`` as plain containers; anything else as it is."""
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


__all__ = [
    "LOGGER_EXTRAS",
    "read_eval_rows",
    "check_logger",
    "make_logger",
    "close_logger",
    "close_open_loggers",
    "resume_logger",
    "hparams",
]
