"""Environments in the library's TensorDict vocabulary (see DESIGN.md)."""

from resq_torchrl.envs.matrix_game import PAPER_PAYOFF, MatrixGameEnv, payoff_tensor

__all__ = ["MatrixGameEnv", "PAPER_PAYOFF", "payoff_tensor"]
