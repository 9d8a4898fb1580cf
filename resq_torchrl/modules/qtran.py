"""QTRAN's joint networks (Son et al., ICML 2019, "QTRAN-base")."""

from __future__ import annotations

import torch
from torch import nn

from resq_torchrl.modules.layers import check_sizes, mlp


class QTranJointNetwork(nn.Module):
    """Joint action value ``Q_jt(s, u)`` and state value ``V_jt(s)`` of QTRAN.

    ``Q_jt`` reads the state and the sum over agents of an embedding of each agent's
    ``[features_i, one-hot u_i]`` (features: the agent network's last hidden layer, e.g. the
    GRU output); the sum makes it invariant to the agents' order, as in the paper. ``V_jt``
    reads the state only. Layout of pymarl's ``QTranBase`` ("qtran_paper" architecture):
    encoder ``Linear -> ReLU -> Linear`` of width ``H + A``, ``Q_jt`` and ``V_jt`` MLPs with
    two hidden layers of ``embed_dim``.

    Shapes:
        ``features [*B, N, H]``, ``action_one_hot [*B, N, A]``, ``state [*B, S]`` ->
        ``q_jt(...)`` ``[*B, 1]``; ``state [*B, S]`` -> ``v(state)`` ``[*B, 1]``.

    Args:
        n_agents: ``N``.
        n_actions: ``A``.
        feature_dim: ``H``, the agents' feature size.
        state_dim: ``S``.
        embed_dim: width of the ``Q_jt`` and ``V_jt`` hidden layers (pymarl: 64).
        device: parameter device.
    """

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        feature_dim: int,
        state_dim: int,
        embed_dim: int = 64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            "QTranJointNetwork",
            n_agents=n_agents,
            n_actions=n_actions,
            feature_dim=feature_dim,
            state_dim=state_dim,
            embed_dim=embed_dim,
        )
        self.n_agents, self.n_actions = n_agents, n_actions
        self.feature_dim, self.state_dim = feature_dim, state_dim
        width = feature_dim + n_actions
        self.action_encoding = mlp(width, width, width, 2, device)
        self.q_net = mlp(state_dim + width, embed_dim, 1, 3, device)
        self.v_net = mlp(state_dim, embed_dim, 1, 3, device)

    def _check(self, features: torch.Tensor, action_one_hot: torch.Tensor, state: torch.Tensor):
        batch = state.shape[:-1]
        expected = {
            "features": (features, (*batch, self.n_agents, self.feature_dim)),
            "action_one_hot": (action_one_hot, (*batch, self.n_agents, self.n_actions)),
        }
        if state.shape[-1] != self.state_dim:
            raise ValueError(
                f"QTranJointNetwork expects state [*B, {self.state_dim}], got {tuple(state.shape)}"
            )
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"QTranJointNetwork expects {name} of shape {shape} (N={self.n_agents} "
                    f"agents), got {tuple(tensor.shape)}"
                )

    def q_jt(
        self, features: torch.Tensor, action_one_hot: torch.Tensor, state: torch.Tensor
    ) -> torch.Tensor:
        """``Q_jt(s, u)`` ``[*B, 1]``."""
        self._check(features, action_one_hot, state)
        dtype = self.q_net[0].weight.dtype
        x = torch.cat([features.to(dtype), action_one_hot.to(dtype)], dim=-1)
        encoded = self.action_encoding(x).sum(-2)  # [*B, H + A]
        return self.q_net(torch.cat([state.to(dtype), encoded], dim=-1))

    def v(self, state: torch.Tensor) -> torch.Tensor:
        """``V_jt(s)`` ``[*B, 1]``."""
        if state.shape[-1] != self.state_dim:
            raise ValueError(
                f"QTranJointNetwork expects state [*B, {self.state_dim}], got {tuple(state.shape)}"
            )
        return self.v_net(state.to(self.v_net[0].weight.dtype))

    def forward(
        self, features: torch.Tensor, action_one_hot: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_jt(s, u), V_jt(s))``, each ``[*B, 1]``."""
        return self.q_jt(features, action_one_hot, state), self.v(state)
