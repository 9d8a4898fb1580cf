"""Mixers: per-agent chosen utilities ``[*B, N, 1]`` and a state ``[*B, S]`` -> ``[*B, 1]``.

All mixers subclass torchrl's :class:`~torchrl.modules.models.multiagent.Mixer`, which checks
the agent count and the state shape and flattens batch dimensions for us; each class here only
writes ``mix``, and ``mix_fractions`` for the distributional methods (many sets of utilities,
one state: ``QuantileMixer``). torchrl's own ``QMixer`` has one-layer hypernetworks, so the
pymarl two-layer variant used by the QMIX/ResQ reference configs is written here.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrl.modules.models.multiagent import Mixer, VDNMixer

from resq_torchrl.modules.layers import check_sizes

__all__ = ["VDNMixer", "QMixer", "QattenMixer", "FeedForwardMixer"]


def _check_batch(owner: nn.Module, batch: torch.Size, state: torch.Tensor) -> None:
    """Utilities of batch shape ``batch`` and a ``state [*B, S]`` must share ``*B``: the
    mixers flatten both, so a state of another batch shape with as many rows (``[6, 4]``
    for ``[4, 6]``) would silently pair the wrong samples. torchrl's ``Mixer.forward``
    checks the agent and state sizes, not the batch."""
    if state.shape[:-1] != batch:
        raise ValueError(
            f"{type(owner).__name__}: utilities of batch shape {tuple(batch)} with a state of "
            f"batch shape {tuple(state.shape[:-1])}; expected the same [*B] (state [*B, S])"
        )


def _mlp_head(in_dim: int, embed_dim: int, device) -> nn.Sequential:
    """``Linear -> ReLU -> Linear(1)``: the state value ``V(s)`` used as the last bias."""
    return nn.Sequential(
        nn.Linear(in_dim, embed_dim, device=device),
        nn.ReLU(),
        nn.Linear(embed_dim, 1, device=device),
    )


class QMixer(Mixer):
    """QMIX mixer (Rashid et al. 2018) with two-layer hypernetworks, as in pymarl.

    ``Q_tot = elu(q^T |W1(s)| + b1(s)) |W2(s)| + V(s)``: monotonic in every agent's utility
    because both hypernetwork outputs pass through ``abs``.

    Shapes: ``chosen_action_value [*B, N, 1]``, ``state [*B, S]`` -> ``[*B, 1]``.

    Args:
        n_agents: number of agents ``N``.
        state_dim: state size ``S``.
        mixing_embed_dim: width of the mixing layer (reference: 32).
        hypernet_embed: hidden width of the hypernetworks (reference: 64).
        hypernet_layers: 1 (linear hypernetworks) or 2 (reference).
        device: parameter device.
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        mixing_embed_dim: int = 32,
        hypernet_embed: int = 64,
        hypernet_layers: int = 2,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(
            "QMixer",
            n_agents=n_agents,
            state_dim=state_dim,
            mixing_embed_dim=mixing_embed_dim,
            hypernet_embed=hypernet_embed,
        )
        super().__init__(
            n_agents=n_agents, needs_state=True, state_shape=(state_dim,), device=device
        )
        self.embed_dim = mixing_embed_dim
        self.state_dim = state_dim

        def hyper(out_dim: int) -> nn.Module:
            if hypernet_layers == 1:
                return nn.Linear(state_dim, out_dim, device=device)
            if hypernet_layers == 2:
                return nn.Sequential(
                    nn.Linear(state_dim, hypernet_embed, device=device),
                    nn.ReLU(),
                    nn.Linear(hypernet_embed, out_dim, device=device),
                )
            raise ValueError(f"hypernet_layers must be 1 or 2, got {hypernet_layers}")

        self.hyper_w_1 = hyper(mixing_embed_dim * n_agents)
        self.hyper_w_final = hyper(mixing_embed_dim)
        self.hyper_b_1 = nn.Linear(state_dim, mixing_embed_dim, device=device)
        self.V = _mlp_head(state_dim, mixing_embed_dim, device)

    def mix(self, chosen_action_value: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.mix_fractions(chosen_action_value.transpose(-1, -2), state)

    def mix_fractions(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``K`` sets of utilities that share one state, ``q [*B, K, N]``, ``state [*B, S]``
        -> ``[*B, K]``: the hypernetworks run once per state, not once per set (the same
        operations as ``K`` calls of ``mix``; ``mix`` is the case ``K = 1``)."""
        batch, k = q.shape[:-2], q.shape[-2]
        _check_batch(self, batch, state)
        state = state.reshape(-1, self.state_dim).to(q.dtype)  # a float64 state, as the others
        q = q.reshape(-1, k, self.n_agents)
        w1 = self.hyper_w_1(state).abs().view(-1, self.n_agents, self.embed_dim)
        b1 = self.hyper_b_1(state).view(-1, 1, self.embed_dim)
        hidden = nn.functional.elu(torch.bmm(q, w1) + b1)  # [M, K, E]
        w_final = self.hyper_w_final(state).abs().view(-1, self.embed_dim, 1)
        v = self.V(state).view(-1, 1, 1)
        return (torch.bmm(hidden, w_final) + v).view(*batch, k)


class FeedForwardMixer(Mixer):
    """Unconstrained mixer: Weighted QMIX's central ``Q*`` mixer, and ResQ's residual ``R``.

    ``f([s, q_1..q_N]) + V(s)`` with ``f`` an MLP of ``hidden_layers`` ReLU layers of
    ``embed_dim`` units and a ``Linear(1)`` output, ``V = Linear -> ReLU -> Linear(1)``.

    ``hidden_layers`` defaults to 2, the depth every result in ``docs/results.md`` was made
    with. The reference code has 3: ``QMixerCentralFF`` in Weighted QMIX's
    (``oxwhirl/wqmix``, ``src/modules/mixers/qmix_central_no_hyper.py``) and in ResQ's
    released code, whose central and residual mixers are that class; ``hidden_layers=3``
    builds it.
    Not monotonic: it can represent any joint action-value, which is what the central
    ``Q*`` of ResQ and Weighted QMIX needs, and what ResQ mixes into the residual ``R``
    (``ResQLoss`` turns it into ``Q_r = -|R|``, as in the reference code's ``rest_mixer``).

    Shapes: ``chosen_action_value [*B, N, 1]``, ``state [*B, S]`` -> ``[*B, 1]``.
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        embed_dim: int = 128,
        device: torch.device | str | None = None,
        hidden_layers: int = 2,
    ) -> None:
        check_sizes(
            "FeedForwardMixer",
            n_agents=n_agents,
            state_dim=state_dim,
            embed_dim=embed_dim,
            hidden_layers=hidden_layers,
        )
        super().__init__(
            n_agents=n_agents, needs_state=True, state_shape=(state_dim,), device=device
        )
        self.state_dim = state_dim
        layers: list[nn.Module] = []
        width = state_dim + n_agents
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, embed_dim, device=device), nn.ReLU()]
            width = embed_dim
        self.net = nn.Sequential(*layers, nn.Linear(width, 1, device=device))
        self.V = _mlp_head(state_dim, embed_dim, device)

    def mix(self, chosen_action_value: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        batch = chosen_action_value.shape[:-2]
        _check_batch(self, batch, state)
        state = state.reshape(-1, self.state_dim).to(chosen_action_value.dtype)
        q = chosen_action_value.reshape(-1, self.n_agents)
        out = self.net(torch.cat([state, q], dim=-1)) + self.V(state)
        return out.view(*batch, 1)

    def mix_fractions(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``K`` sets of utilities that share one state, ``q [*B, K, N]``, ``state [*B, S]``
        -> ``[*B, K]``, each mixed as ``mix`` mixes one (a distribution's quantile fractions:
        ResZ's residual and central mixers).

        The first layer is split by its inputs, ``W [s, q] + b = (W_s s + b) + W_q q``, and
        the state's part and ``V(s)`` are computed once per state instead of once per set:
        with a 200-feature state and 8 fractions that is about 2.9x fewer products for the
        mixer. The same function; the split sum rounds differently from ``mix``'s single
        product (float32: about 1e-6 relative).

        A state no wider than the utilities (the matrix game's single feature) keeps
        ``mix``'s single product per set: the split saves little there (0.86x the time of a
        vectorised ResZ matrix-game update, 0.93x single-seed) and the single product keeps
        the published matrix-game results bit for bit."""
        _check_batch(self, q.shape[:-2], state)
        if self.state_dim <= self.n_agents:
            k = q.shape[-2]
            per_set = state.unsqueeze(-2).expand(*state.shape[:-1], k, self.state_dim)
            return self(q.unsqueeze(-1), per_set).squeeze(-1)
        state = state.to(q.dtype)
        first = self.net[0]
        s = self.state_dim
        h_state = nn.functional.linear(state, first.weight[:, :s], first.bias)  # [*B, E]
        h = torch.relu(nn.functional.linear(q, first.weight[:, s:]) + h_state.unsqueeze(-2))
        out = self.net[2:](h).squeeze(-1)  # the layers after the first: [*B, K]
        return out + self.V(state)


class QattenMixer(Mixer):
    """Qatten mixer (Yang et al. 2020): multi-head attention over agents, monotonic in every
    ``Q_i``.

    ``Q_tot = sum_h w_h(s) sum_i lambda_{i,h}(s) Q_i + c(s)`` with attention weights
    ``lambda_{., h} = softmax_i(q_h(s) . k_h(e_i) / sqrt(d))`` (non-negative, summing to one
    over agents), non-negative head weights ``w_h(s) = |f(s)|`` and a state bias ``c(s)``.

    The agent features ``e_i`` are the ``unit_dim`` features of agent ``i`` read from the
    first ``N * unit_dim`` entries of the state when ``unit_dim`` is given (the layout of
    SMAC's state), else the state with a one-hot agent id appended (any env).

    Shapes: ``chosen_action_value [*B, N, 1]``, ``state [*B, S]`` -> ``[*B, 1]``.

    Args:
        n_agents: number of agents ``N``.
        state_dim: state size ``S``.
        n_heads: attention heads (reference: 4).
        embed_dim: query/key size per head (reference: 32).
        hypernet_embed: hidden width of the query, head-weight and bias networks.
        unit_dim: per-agent feature size at the start of the state, or ``None``.
        device: parameter device.
    """

    def __init__(
        self,
        n_agents: int,
        state_dim: int,
        n_heads: int = 4,
        embed_dim: int = 32,
        hypernet_embed: int = 64,
        unit_dim: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_sizes(
            "QattenMixer",
            n_agents=n_agents,
            state_dim=state_dim,
            n_heads=n_heads,
            embed_dim=embed_dim,
            hypernet_embed=hypernet_embed,
        )
        super().__init__(
            n_agents=n_agents, needs_state=True, state_shape=(state_dim,), device=device
        )
        if unit_dim is not None and not 0 < unit_dim * n_agents <= state_dim:
            raise ValueError(
                f"unit_dim={unit_dim} x {n_agents} agents does not fit in a state of "
                f"{state_dim} features"
            )
        self.state_dim, self.n_heads, self.embed_dim, self.unit_dim = (
            state_dim,
            n_heads,
            embed_dim,
            unit_dim,
        )
        key_in = unit_dim if unit_dim is not None else state_dim + n_agents
        self.query = nn.Sequential(
            nn.Linear(state_dim, hypernet_embed, device=device),
            nn.ReLU(),
            nn.Linear(hypernet_embed, n_heads * embed_dim, device=device),
        )
        self.key = nn.Linear(key_in, n_heads * embed_dim, bias=False, device=device)
        self.head_weight = _mlp_head(state_dim, hypernet_embed, device)
        self.head_weight[-1] = nn.Linear(hypernet_embed, n_heads, device=device)
        self.V = _mlp_head(state_dim, hypernet_embed, device)

    def agent_features(self, state: torch.Tensor) -> torch.Tensor:
        """``[M, S]`` -> ``[M, N, F]``."""
        n = self.n_agents
        if self.unit_dim is not None:
            return state[:, : n * self.unit_dim].reshape(-1, n, self.unit_dim)
        eye = torch.eye(n, device=state.device, dtype=state.dtype).expand(state.shape[0], n, n)
        return torch.cat([state.unsqueeze(1).expand(-1, n, -1), eye], dim=-1)

    def attention(self, state: torch.Tensor) -> torch.Tensor:
        """Attention weights ``lambda`` ``[M, H, N]`` (>= 0, sum 1 over agents)."""
        h, d = self.n_heads, self.embed_dim
        q = self.query(state).view(-1, h, 1, d)
        k = self.key(self.agent_features(state)).view(-1, self.n_agents, h, d).transpose(1, 2)
        return torch.softmax((q * k).sum(-1) / d**0.5, dim=-1)

    def mix(self, chosen_action_value: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.mix_fractions(chosen_action_value.transpose(-1, -2), state)

    def mix_fractions(self, q: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``K`` sets of utilities that share one state, ``q [*B, K, N]``, ``state [*B, S]``
        -> ``[*B, K]``: the attention, head weights and ``V(s)`` are computed once per
        state, not once per set (``mix`` is the case ``K = 1``)."""
        batch, k = q.shape[:-2], q.shape[-2]
        _check_batch(self, batch, state)
        state = state.reshape(-1, self.state_dim).to(q.dtype)
        q = q.reshape(-1, k, 1, self.n_agents)  # [M, K, 1, N]
        per_head = (self.attention(state).unsqueeze(1) * q).sum(-1)  # [M, K, H]
        w = self.head_weight(state).abs().unsqueeze(1)  # [M, 1, H], non-negative
        return ((w * per_head).sum(-1) + self.V(state)).view(*batch, k)
