"""Implicit quantile (IQN) agents: per-agent return distributions for ResZ, DDN and DMIX.

An IQN agent maps its features ``h`` and a quantile fraction ``tau`` in ``(0, 1)`` to the
``tau``-quantile of each action's return: ``Z(tau) = head(h * phi(tau))`` with the cosine
embedding ``phi(tau) = ReLU(Linear([cos(pi i tau)]_{i < 64}))`` (Dabney et al. 2018).

Fractions. The networks read ``K`` fractions ``[*B, K]`` at :data:`FRACTIONS_KEY` when the
input has them (the losses write them there: the same fractions for every agent of one
sample, fresh ones for every sample and time step) and otherwise draw ``n_acting``
fractions (32) uniformly, which is what acting does. Fractions drawn for acting are not
written back: acting only needs the mean, and a stale entry would be reused at the next
step.

Outputs: ``("agents", "action_value")`` ``[*B, N, A, K]`` (the quantiles) and
``("agents", "action_value_mean")`` ``[*B, N, A]`` (their mean over the ``K`` fractions:
what the greedy policy acts on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.modules import MLP

from resq_torchrl.modules.agents import with_agent_id
from resq_torchrl.modules.layers import check_sizes
from resq_torchrl.modules.rnn import MultiAgentGRU

#: where the quantile fractions ``[*B, K]`` of a sample are read from
FRACTIONS_KEY = "quantile_fractions"
#: where the mean over fractions of the quantiles, ``[*B, N, A]``, is written
MEAN_KEY = ("agents", "action_value_mean")


def sample_fractions(
    batch_shape: Sequence[int], n: int, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``n`` fractions uniform in ``[0, 1)`` for every sample: ``[*batch_shape, n]``."""
    return torch.rand(*batch_shape, n, device=device, dtype=dtype)


class QuantileHead(nn.Module):
    """``Z(tau) = Linear(h * ReLU(Linear(cos(pi * i * tau))))``, ``i = 0 .. n_cos - 1``.

    Shapes: ``h [*B, N, H]``, ``tau [*B, K]`` -> ``[*B, N, A, K]``.
    """

    def __init__(self, feature_dim: int, n_actions: int, n_cos: int = 64, device=None) -> None:
        super().__init__()
        check_sizes("QuantileHead", feature_dim=feature_dim, n_actions=n_actions, n_cos=n_cos)
        self.n_cos = n_cos
        self.cos_embedding = nn.Linear(n_cos, feature_dim, device=device)
        self.out = nn.Linear(feature_dim, n_actions, device=device)
        self.register_buffer(
            "frequencies", math.pi * torch.arange(n_cos, dtype=torch.float32, device=device)
        )

    def forward(self, h: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        if tau.shape[:-1] != h.shape[:-2]:
            raise ValueError(
                f"quantile fractions of shape {tuple(tau.shape)} do not match features of "
                f"shape {tuple(h.shape)} (expected [*B, K] fractions for [*B, N, H] features)"
            )
        phi = torch.relu(self.cos_embedding(torch.cos(tau.unsqueeze(-1) * self.frequencies)))
        x = h.unsqueeze(-2) * phi.unsqueeze(-3)  # [*B, N, K, H]
        return self.out(x).transpose(-1, -2)  # [*B, N, A, K]


class _QuantileOutputs:
    """Shared by the IQN agents: fractions from the input or drawn, quantiles and mean."""

    head: QuantileHead
    n_acting: int
    fractions_key: NestedKey
    mean_key: NestedKey

    def _set_outputs(self, n_acting: int, fractions_key: NestedKey, mean_key: NestedKey) -> None:
        """The acting fraction count (checked) and the fraction and mean keys."""
        check_sizes(type(self).__name__, n_acting=n_acting)
        self.n_acting = int(n_acting)
        self.fractions_key, self.mean_key = unravel_key(fractions_key), unravel_key(mean_key)

    def _fractions(self, tensordict: TensorDictBase, h: torch.Tensor) -> torch.Tensor:
        tau = tensordict.get(self.fractions_key, None)
        if tau is None:
            return sample_fractions(h.shape[:-2], self.n_acting, device=h.device, dtype=h.dtype)
        return tau.to(h.dtype)

    def _quantiles(self, h: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        z = self.head(h, self._fractions(tensordict, h))
        tensordict.set(self.mean_key, z.mean(-1))
        return z


class MultiAgentIQN(_QuantileOutputs, MultiAgentGRU):
    """Recurrent IQN agents: :class:`~resq_torchrl.modules.MultiAgentGRU`'s trunk (pymarl
    layout, step mode and unrolled mode alike) with a :class:`QuantileHead`.

    Keys: those of :class:`MultiAgentGRU` plus the optional input :data:`FRACTIONS_KEY`
    ``[*B, K]`` and the output :data:`MEAN_KEY` ``[*B, N, A]``; ``out_key`` holds the
    quantiles ``[*B, N, A, K]``.

    Args:
        obs_dim, n_actions, n_agents, hidden_dim, last_action, agent_id, device: as
            :class:`MultiAgentGRU`.
        n_cos: cosine features of the fraction embedding (64).
        n_acting: fractions drawn when the input has none (32).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> iqn = MultiAgentIQN(obs_dim=4, n_actions=3, n_agents=2)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 2, 4),
        ...                  ("agents", "last_action"): torch.zeros(5, 2, 3)}, [5])
        >>> iqn(td)["agents", "action_value"].shape  # 32 acting fractions
        torch.Size([5, 2, 3, 32])
        >>> td["quantile_fractions"] = torch.rand(5, 8)
        >>> iqn(td)["agents", "action_value"].shape
        torch.Size([5, 2, 3, 8])
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_agents: int,
        hidden_dim: int = 64,
        last_action: bool = True,
        agent_id: bool = True,
        device: torch.device | str | None = None,
        *,
        n_cos: int = 64,
        n_acting: int = 32,
        fractions_key: NestedKey = FRACTIONS_KEY,
        mean_key: NestedKey = MEAN_KEY,
        **keys,
    ) -> None:
        super().__init__(
            obs_dim, n_actions, n_agents, hidden_dim, last_action, agent_id, device, **keys
        )
        del self.net.fc2  # the quantile head replaces the scalar one
        self.head = QuantileHead(hidden_dim, n_actions, n_cos, device)
        self._set_outputs(n_acting, fractions_key, mean_key)
        self.in_keys = [*self.in_keys, self.fractions_key]
        self.optional_in_keys = [*self.optional_in_keys, self.fractions_key]
        self.out_keys = [*self.out_keys, self.mean_key]

    def _head(self, h: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        return self._quantiles(h, tensordict)


class IQNAgentMLP(_QuantileOutputs, TensorDictModuleBase):
    """Feed-forward IQN agents sharing parameters: ``[observation, one-hot agent id]`` ->
    MLP with ReLU (features of ``hidden[-1]``) -> :class:`QuantileHead`.

    Keys: reads ``observation_key`` and the optional :data:`FRACTIONS_KEY`; writes
    ``out_key`` ``[*B, N, A, K]`` and :data:`MEAN_KEY` ``[*B, N, A]``.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_agents: int,
        hidden: Sequence[int] = (64,),
        agent_id: bool = True,
        device: torch.device | str | None = None,
        *,
        n_cos: int = 64,
        n_acting: int = 32,
        observation_key: NestedKey = ("agents", "observation"),
        out_key: NestedKey = ("agents", "action_value"),
        fractions_key: NestedKey = FRACTIONS_KEY,
        mean_key: NestedKey = MEAN_KEY,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("IQNAgentMLP needs at least one hidden layer (its features)")
        layers = {f"hidden[{i}]": h for i, h in enumerate(hidden)}
        check_sizes(
            "IQNAgentMLP", obs_dim=obs_dim, n_actions=n_actions, n_agents=n_agents, **layers
        )
        self.obs_dim, self.n_actions, self.n_agents = obs_dim, n_actions, n_agents
        self.agent_id = agent_id
        in_dim = obs_dim + (n_agents if agent_id else 0)
        self.trunk = MLP(
            in_features=in_dim,
            out_features=hidden[-1],
            num_cells=list(hidden[:-1]),
            activation_class=nn.ReLU,
            device=device,
        )
        self.head = QuantileHead(hidden[-1], n_actions, n_cos, device)
        self._set_outputs(n_acting, fractions_key, mean_key)
        self.observation_key = unravel_key(observation_key)
        self.out_key = unravel_key(out_key)
        self.in_keys = [self.observation_key, self.fractions_key]
        self.optional_in_keys = [self.fractions_key]
        self.out_keys = [self.out_key, self.mean_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key)
        if obs.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"IQNAgentMLP was built for {self.n_agents} agents with {self.obs_dim} "
                f"observation features, got observation of shape {tuple(obs.shape)}"
            )
        x = obs.to(self.head.out.weight.dtype)
        if self.agent_id:
            x = with_agent_id(x, self.n_agents)
        h = torch.relu(self.trunk(x))
        tensordict.set(self.out_key, self._quantiles(h, tensordict))
        return tensordict
