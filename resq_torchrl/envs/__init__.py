"""Environments in the library's TensorDict vocabulary (see docs/design.md)."""

from resq_torchrl.envs.matrix_game import PAPER_PAYOFF, MatrixGameEnv, payoff_tensor
from resq_torchrl.envs.predator_prey import PredatorPreyEnv

__all__ = ["MatrixGameEnv", "PAPER_PAYOFF", "PredatorPreyEnv", "payoff_tensor"]
