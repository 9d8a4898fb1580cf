"""Builders from config and training loops."""

from resq_torchrl.training.assembler import EpisodeAssembler
from resq_torchrl.training.builders import (
    LOSS_BUILDERS,
    EnvDims,
    make_loss,
    make_optimizer,
    make_target_updater,
    total_loss,
)
from resq_torchrl.training.matrix_game import (
    train_matrix_game,
    train_matrix_game_seeds,
    train_matrix_game_vectorized,
)

__all__ = [
    "EpisodeAssembler",
    "LOSS_BUILDERS",
    "EnvDims",
    "make_loss",
    "make_optimizer",
    "make_target_updater",
    "total_loss",
    "train_matrix_game",
    "train_matrix_game_seeds",
    "train_matrix_game_vectorized",
]
