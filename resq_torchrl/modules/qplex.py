"""QPLEX's duplex dueling mixer (Wang et al., ICLR 2021, "DMAQ-general")."""

from __future__ import annotations

import torch
from torch import nn

from resq_torchrl.modules.layers import check_sizes, mlp


class KernelMLP(nn.Module):
    """``K`` independent MLPs on the same input, run as one batched computation.

    Equivalent to ``K`` separate ``Linear -> ReLU -> ... -> Linear`` networks (each layer
    initialised as ``nn.Linear``), but a forward pass costs ``layers`` batched matmuls
    instead of ``K * layers`` small ones (QPLEX evaluates 3 x 10 such extractors per call).

    Shapes: ``[*B, in_dim]`` -> ``[*B, K, out_dim]``.
    """

    def __init__(
        self, n_kernels: int, in_dim: int, embed: int, out_dim: int, layers: int, device=None
    ) -> None:
        super().__init__()
        dims = [in_dim] + [embed] * (layers - 1) + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:], strict=True):
            bound = 1.0 / fan_in**0.5  # nn.Linear's default initialisation
            w = torch.empty(n_kernels, fan_in, fan_out, device=device).uniform_(-bound, bound)
            b = torch.empty(n_kernels, fan_out, device=device).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("...i,kio->...ko", x, self.weights[0]) + self.biases[0]
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:], strict=True):
            h = torch.einsum("...ki,kio->...ko", torch.relu(h), w) + b
        return h


class QPLEXMixer(nn.Module):
    """``Q_tot(s, u) = sum_i V_i(s) + sum_i lambda_i(s, u) A_i(s, u_i)`` (QPLEX).

    * Transformation: ``Q'_i = w_i(s) Q_i + v_i(s)`` with ``w_i = |f_w(s)_i| + 1e-10 > 0``;
      ``V_i = Q'_i(max)`` (the agent's best available utility) and
      ``A_i = Q'_i(u_i) - V_i <= 0``.
    * ``lambda_i(s, u) = sum_k |key_k(s)| * sigmoid(agents_k(s))_i *
      sigmoid(action_k(s, u))_i > 0``, ``K`` attention kernels (``n_kernels``).
    * Gradient path as in the paper's code: the value is computed as
      ``sum_i Q'_i(u_i) + sum_i (lambda_i - 1) sg(A_i)`` (equal to the formula above), so the
      utilities learn through the transformation and ``lambda`` only through the advantage
      term; ``max_q`` is expected without gradient.

    Shapes:
        ``chosen [*B, N, 1]`` (``Q_i(u_i)``), ``max_q [*B, N, 1]`` (``max`` over available
        actions of ``Q_i``), ``action_one_hot [*B, N, A]``, ``state [*B, S]`` -> ``[*B, 1]``.

    Args:
        n_agents: ``N``.
        n_actions: ``A``.
        state_dim: ``S``.
        hypernet_embed: hidden width of ``f_w`` and ``v`` (one hidden layer each).
        n_kernels: ``K``.
        adv_hypernet_layers: layers of each attention extractor (1 = linear).
        adv_hypernet_embed: hidden width of the extractors.
        device: parameter device.
    """

    def __init__(
        self,
        n_agents: int,
        n_actions: int,
        state_dim: int,
        hypernet_embed: int = 64,
        n_kernels: int = 10,
        adv_hypernet_layers: int = 3,
        adv_hypernet_embed: int = 64,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        sizes = dict(
            n_agents=n_agents,
            n_actions=n_actions,
            state_dim=state_dim,
            hypernet_embed=hypernet_embed,
            n_kernels=n_kernels,
            adv_hypernet_layers=adv_hypernet_layers,
            adv_hypernet_embed=adv_hypernet_embed,
        )
        check_sizes("QPLEXMixer", **sizes)
        self.n_agents, self.n_actions, self.state_dim = n_agents, n_actions, state_dim
        self.n_kernels = n_kernels
        self.hyper_w = mlp(state_dim, hypernet_embed, n_agents, 2, device)
        self.hyper_v = mlp(state_dim, hypernet_embed, n_agents, 2, device)
        layers, embed = adv_hypernet_layers, adv_hypernet_embed
        sa_dim = state_dim + n_agents * n_actions
        self.key_extractor = KernelMLP(n_kernels, state_dim, embed, 1, layers, device)
        self.agents_extractor = KernelMLP(n_kernels, state_dim, embed, n_agents, layers, device)
        self.action_extractor = KernelMLP(n_kernels, sa_dim, embed, n_agents, layers, device)

    def _check(self, name: str, tensor: torch.Tensor, shape: tuple[int, ...]) -> None:
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"QPLEXMixer expects {name} of shape {shape} (N={self.n_agents} agents, "
                f"A={self.n_actions} actions, S={self.state_dim}), got {tuple(tensor.shape)}"
            )

    def transform(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``Q'_i = w_i(s) Q_i + v_i(s)`` for utilities ``q`` ``[*B, N, k]`` -> ``[*B, N, k]``."""
        s = state.to(self.hyper_w[0].weight.dtype)
        w = self.hyper_w(s).abs().unsqueeze(-1) + 1e-10
        v = self.hyper_v(s).unsqueeze(-1)
        return w * q + v

    def lambdas(self, state: torch.Tensor, action_one_hot: torch.Tensor) -> torch.Tensor:
        """``lambda_i(s, u)`` ``[*B, N, 1]``, positive."""
        s = state.to(self.hyper_w[0].weight.dtype)
        sa = torch.cat([s, action_one_hot.to(s.dtype).flatten(-2)], dim=-1)
        key = self.key_extractor(s).abs() + 1e-10  # [*B, K, 1]
        agents = torch.sigmoid(self.agents_extractor(s))  # [*B, K, N]
        action = torch.sigmoid(self.action_extractor(sa))  # [*B, K, N]
        return (key * agents * action).sum(-2).unsqueeze(-1)

    def forward(
        self,
        chosen: torch.Tensor,
        max_q: torch.Tensor,
        action_one_hot: torch.Tensor,
        state: torch.Tensor,
    ) -> torch.Tensor:
        batch = tuple(state.shape[:-1])
        self._check("state", state, (*batch, self.state_dim))
        self._check("chosen", chosen, (*batch, self.n_agents, 1))
        self._check("max_q", max_q, (*batch, self.n_agents, 1))
        self._check("action_one_hot", action_one_hot, (*batch, self.n_agents, self.n_actions))
        q_chosen = self.transform(chosen, state)
        q_max = self.transform(max_q, state)
        advantage = (q_chosen - q_max).detach()
        lam = self.lambdas(state, action_one_hot)
        return q_chosen.sum(-2) + ((lam - 1.0) * advantage).sum(-2)
