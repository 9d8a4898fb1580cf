"""Per-agent utility networks with parameters shared across agents."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import TensorDictModule
from tensordict.utils import NestedKey
from torch import nn
from torchrl.modules import MLP

from resq_torchrl.modules.layers import check_sizes


def with_agent_id(x: torch.Tensor, n_agents: int) -> torch.Tensor:
    """Append a one-hot agent index to per-agent inputs: ``[*B, N, F]`` -> ``[*B, N, F + N]``."""
    eye = torch.eye(n_agents, device=x.device, dtype=x.dtype)
    return torch.cat([x, eye.expand(*x.shape[:-1], n_agents)], dim=-1)


class AgentMLP(nn.Module):
    """An MLP applied to every agent with one set of parameters.

    Shapes:
        input ``observation``: ``[*B, N, obs_dim]``
        output ``action_value``: ``[*B, N, n_actions]``

    With ``agent_id=True`` a one-hot agent index (``N`` features) is appended to each
    agent's observation, so agents sharing parameters can still learn different utilities.

    Args:
        obs_dim: per-agent observation size.
        n_actions: number of discrete actions (output size).
        n_agents: number of agents ``N``.
        hidden: hidden layer sizes.
        agent_id: append a one-hot agent id to the input.
        device: parameter device.
        return_features: also return the last hidden layer ``[*B, N, hidden[-1]]`` (the
            per-agent features QTRAN's joint network reads).
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_agents: int,
        hidden: Sequence[int] = (64,),
        agent_id: bool = True,
        device: torch.device | str | None = None,
        return_features: bool = False,
    ) -> None:
        super().__init__()
        if return_features and not hidden:
            raise ValueError("AgentMLP needs at least one hidden layer to return features")
        layers = {f"hidden[{i}]": h for i, h in enumerate(hidden)}
        check_sizes("AgentMLP", obs_dim=obs_dim, n_actions=n_actions, n_agents=n_agents, **layers)
        self.obs_dim = obs_dim
        self.n_actions = n_actions
        self.n_agents = n_agents
        self.agent_id = agent_id
        self.return_features = return_features
        self.feature_dim = hidden[-1] if hidden else 0
        in_features = obs_dim + (n_agents if agent_id else 0)
        self.net = MLP(
            in_features=in_features,
            out_features=n_actions,
            num_cells=list(hidden),
            activation_class=nn.ReLU,
            device=device,
        )

    def forward(
        self, observation: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if observation.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"AgentMLP was built for {self.n_agents} agents with {self.obs_dim} observation "
                f"features (expected [..., {self.n_agents}, {self.obs_dim}]), got observation "
                f"of shape {tuple(observation.shape)}"
            )
        x = observation.to(self.net[0].weight.dtype)
        if self.agent_id:
            x = with_agent_id(x, self.n_agents)
        if not self.return_features:
            return self.net(x)
        # torchrl's MLP cannot be sliced (a slice rebuilds an MLP without out_features)
        *trunk, head = list(self.net)
        for layer in trunk:
            x = layer(x)
        return head(x), x


def make_agent_qnet(
    obs_dim: int,
    n_actions: int,
    n_agents: int,
    hidden: Sequence[int] = (64,),
    agent_id: bool = True,
    device: torch.device | str | None = None,
    in_key: NestedKey = ("agents", "observation"),
    out_key: NestedKey = ("agents", "action_value"),
    features_key: NestedKey | None = None,
) -> TensorDictModule:
    """An :class:`AgentMLP` as a ``TensorDictModule`` reading ``in_key`` and writing ``out_key``
    (and, with ``features_key``, the last hidden layer ``[*B, N, hidden[-1]]`` there).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> qnet = make_agent_qnet(obs_dim=4, n_actions=3, n_agents=2)
        >>> td = TensorDict({("agents", "observation"): torch.zeros(5, 2, 4)}, [5])
        >>> qnet(td)["agents", "action_value"].shape
        torch.Size([5, 2, 3])
    """
    return TensorDictModule(
        AgentMLP(obs_dim, n_actions, n_agents, hidden, agent_id, device, features_key is not None),
        in_keys=[in_key],
        out_keys=[out_key] if features_key is None else [out_key, features_key],
    )
