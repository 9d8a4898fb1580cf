"""The run's logger: one of torchrl's loggers (``torchrl.record.loggers``), chosen by
``cfg.logger``, with the package each one needs named in the error when it is missing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torchrl.record.loggers import Logger, get_logger

from resq_torchrl.errors import ConfigError, require

#: torchrl loggers a run can write to, and (module, package extra) each one needs
LOGGER_EXTRAS: dict[str, tuple[str, str] | None] = {
    "csv": None,
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}


def check_logger(name: str) -> None:
    """Raise a :class:`ConfigError` for a logger not in :data:`LOGGER_EXTRAS`, and a
    :class:`MissingDependencyError` naming the extra when its package is not installed."""
    if name not in LOGGER_EXTRAS:
        raise ConfigError(f"unknown logger {name!r}; choose one of: {', '.join(LOGGER_EXTRAS)}")
    if LOGGER_EXTRAS[name] is not None:
        module, extra = LOGGER_EXTRAS[name]
        require(module, extra, f"logger={name}")


def make_logger(cfg: Mapping, out_dir: Path) -> Logger:
    """The logger of a run writing under ``out_dir``."""
    check_logger(cfg["logger"])
    # wandb runs offline unless asked otherwise (machines without network, reproducibility)
    kwargs = {"offline": bool(cfg.get("wandb_offline", True))} if cfg["logger"] == "wandb" else {}
    return get_logger(
        cfg["logger"],
        logger_name=str(out_dir),
        experiment_name=str(cfg["experiment_name"]),
        **kwargs,
    )


__all__ = ["LOGGER_EXTRAS", "check_logger", "make_logger"]
