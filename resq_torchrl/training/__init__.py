"""Builders from config and training loops.

The names below are imported on first use (PEP 562 ``__getattr__``): importing one light
submodule (``resq_torchrl.training.evallog``, which reads a run's logs) does not import
torch, torchrl and the envs, as an ``__init__`` that imports everything did."""

from __future__ import annotations

import importlib
from typing import Any

#: exported name -> the submodule that defines it
_EXPORTS = {
    "EpisodeAssembler": "assembler",
    "LOSS_BUILDERS": "builders",
    "EnvDims": "builders",
    "make_loss": "builders",
    "make_optimizer": "builders",
    "make_target_updater": "builders",
    "total_loss": "builders",
    "train_matrix_game": "matrix_game",
    "train_matrix_game_seeds": "matrix_game",
    "train_matrix_game_vectorized": "matrix_game",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
