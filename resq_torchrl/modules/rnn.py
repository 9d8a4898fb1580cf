"""Recurrent per-agent utility network (pymarl's ``RNNAgent``) with an agent dimension.

torchrl's ``GRUModule`` expects ``[*B, T, F]`` inputs and one hidden state per batch element;
agents add a dimension (``[*B, T, N, F]``, one hidden state per agent). Rather than folding
agents into the batch and back around every call, :class:`MultiAgentGRU` is a
``TensorDictModuleBase`` that keeps torchrl's conventions:

* step mode (collection): reads the state at ``("agents", "rnn_hidden")``, zeroes it where
  ``"is_init"`` is set, and writes the new state at ``("next", "agents", "rnn_hidden")``,
  which ``step_mdp`` carries to the next step; :meth:`MultiAgentGRU.make_tensordict_primer`
  gives the env transform that creates the state (and the last action) at reset;
* recurrent mode (``torchrl.modules.set_recurrent_mode(True)``, used by the losses): the
  input is ``[*B, T]`` and the network is unrolled over ``T``, starting from the stored state
  of the first step and restarting from zero wherever ``"is_init"`` is set.

The two modes give the same utilities on the same episodes (tested).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.data import Composite, Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.modules import recurrent_mode


def set_next(tensordict: TensorDictBase, key: NestedKey, value: torch.Tensor) -> None:
    """Write ``value`` at ``("next", *key)``, creating the nested groups with the batch sizes
    of their counterparts at the root (``("next", "agents")`` is ``[*B, N]`` like
    ``"agents"``), as the env's own ``"next"`` entries have them."""
    key = (key,) if isinstance(key, str) else tuple(key)
    if "next" not in tensordict.keys():
        tensordict.set("next", tensordict.empty())
    parent = tensordict.get("next")
    for i in range(1, len(key)):
        prefix = key[:i]
        if prefix[-1] not in parent.keys():
            root = tensordict.get(prefix, None)
            batch = root.batch_size if root is not None else parent.batch_size
            parent.set(prefix[-1], TensorDict({}, batch_size=batch, device=parent.device))
        parent = parent.get(prefix[-1])
    parent.set(key[-1], value)


class AgentGRU(nn.Module):
    """pymarl's ``RNNAgent`` shared by every agent: ``Linear -> ReLU -> GRU -> Linear``.

    The recurrent layer is a one-layer ``nn.GRU`` (the same cell as pymarl's ``GRUCell``) so
    that a whole sequence runs in one call of torch's fused loop.

    Input per agent: ``[observation, one-hot last action (optional), one-hot agent id
    (optional)]``.

    Shapes (``step``): ``observation [*B, N, obs_dim]``, ``last_action [*B, N, A]``,
    ``hidden [*B, N, H]`` -> ``action_value [*B, N, A]``, ``hidden [*B, N, H]``.
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
    ) -> None:
        super().__init__()
        self.obs_dim, self.n_actions, self.n_agents = obs_dim, n_actions, n_agents
        self.hidden_dim = hidden_dim
        self.use_last_action, self.use_agent_id = last_action, agent_id
        in_dim = obs_dim + (n_actions if last_action else 0) + (n_agents if agent_id else 0)
        self.fc1 = nn.Linear(in_dim, hidden_dim, device=device)
        self.rnn = nn.GRU(hidden_dim, hidden_dim, batch_first=True, device=device)
        self.fc2 = nn.Linear(hidden_dim, n_actions, device=device)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Utilities ``[..., A]`` from GRU outputs ``[..., H]``."""
        return self.fc2(h)

    def inputs(self, observation: torch.Tensor, last_action: torch.Tensor | None) -> torch.Tensor:
        """``[*B, N, obs_dim]`` (+ ``[*B, N, A]``) -> network input ``[*B, N, in_dim]``."""
        if observation.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"AgentGRU was built for {self.n_agents} agents with {self.obs_dim} observation "
                f"features, got observation of shape {tuple(observation.shape)}"
            )
        x = [observation.to(self.fc1.weight.dtype)]
        if self.use_last_action:
            if last_action is None:
                raise KeyError("AgentGRU uses the last action but none was given")
            x.append(last_action.to(x[0].dtype))
        if self.use_agent_id:
            eye = torch.eye(self.n_agents, device=observation.device, dtype=x[0].dtype)
            x.append(eye.expand(*observation.shape[:-1], self.n_agents))
        return torch.cat(x, dim=-1)

    def step(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on prepared inputs ``[*B, N, in_dim]`` and states ``[*B, N, H]``."""
        q, h = self.unroll(x.unsqueeze(-3), hidden, time_dim=x.dim() - 2)
        return q.squeeze(-3), h.squeeze(-3)

    def trunk(self, x: torch.Tensor, hidden: torch.Tensor, time_dim: int) -> torch.Tensor:
        """``x [*B, T, N, in_dim]`` (time at ``time_dim``) from states ``[*B, N, H]`` -> the
        state after every step ``[*B, T, N, H]``."""
        z = torch.relu(self.fc1(x)).movedim(time_dim, -2)  # [*B, N, T, H]
        batch, steps = z.shape[:-2], z.shape[-2]
        h0 = hidden.reshape(1, -1, self.hidden_dim).to(z.dtype).contiguous()
        out, _ = self.rnn(z.reshape(-1, steps, self.hidden_dim), h0)
        return out.reshape(*batch, steps, self.hidden_dim).movedim(-2, time_dim)

    def unroll(
        self, x: torch.Tensor, hidden: torch.Tensor, time_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`trunk` and :meth:`head`: utilities ``[*B, T, N, A]`` and states
        ``[*B, T, N, H]``."""
        h = self.trunk(x, hidden, time_dim)
        return self.head(h), h


class MultiAgentGRU(TensorDictModuleBase):
    """:class:`AgentGRU` as a TensorDict module usable step by step and unrolled over time.

    Keys (defaults): reads ``("agents", "observation")``, ``("agents", "last_action")``
    (one-hot ``[*B, N, A]``, zeros at an episode start), ``("agents", "rnn_hidden")``
    ``[*B, N, H]`` and ``"is_init"`` ``[*B, 1]``; writes ``("agents", "action_value")``
    ``[*B, N, A]`` and ``("next", "agents", "rnn_hidden")``; with ``features_key`` also the
    state after the step ``[*B, N, H]`` there (the per-agent features QTRAN reads: the GRU
    output the utilities are computed from).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> gru = MultiAgentGRU(obs_dim=4, n_actions=3, n_agents=2)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 7, 2, 4),
        ...                  ("agents", "last_action"): torch.zeros(5, 7, 2, 3),
        ...                  "is_init": torch.zeros(5, 7, 1, dtype=torch.bool)}, [5, 7])
        >>> with set_recurrent_mode(True):
        ...     gru(td)["agents", "action_value"].shape
        torch.Size([5, 7, 2, 3])
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
        observation_key: NestedKey = ("agents", "observation"),
        last_action_key: NestedKey = ("agents", "last_action"),
        hidden_key: NestedKey = ("agents", "rnn_hidden"),
        is_init_key: NestedKey = "is_init",
        out_key: NestedKey = ("agents", "action_value"),
        features_key: NestedKey | None = None,
    ) -> None:
        super().__init__()
        self.net = AgentGRU(obs_dim, n_actions, n_agents, hidden_dim, last_action, agent_id, device)
        self.observation_key = unravel_key(observation_key)
        self.last_action_key = unravel_key(last_action_key) if last_action else None
        self.hidden_key = unravel_key(hidden_key)
        self.is_init_key = unravel_key(is_init_key)
        self.out_key = unravel_key(out_key)
        self.in_keys = [
            k
            for k in (self.observation_key, self.last_action_key, self.hidden_key, self.is_init_key)
            if k is not None
        ]
        self.features_key = None if features_key is None else unravel_key(features_key)
        self.feature_dim = hidden_dim
        self.out_keys = [self.out_key, unravel_key(("next", self.hidden_key))]
        if self.features_key is not None:
            self.out_keys.append(self.features_key)
        #: absent state starts at zero; absent is_init means "not an episode start"
        self.optional_in_keys = [self.hidden_key, self.is_init_key]

    def _head(self, h: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        """What the network writes at ``out_key`` from the GRU outputs ``h``."""
        return self.net.head(h)

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """Env transform creating zero ``rnn_hidden`` (and ``last_action``) at reset."""
        n, h, a = self.net.n_agents, self.net.hidden_dim, self.net.n_actions
        specs = {self.hidden_key: Unbounded(shape=(n, h))}
        if self.last_action_key is not None:
            specs[self.last_action_key] = Unbounded(shape=(n, a))
        return TensorDictPrimer(Composite(specs), expand_specs=True)

    def _zero_state(self, observation: torch.Tensor) -> torch.Tensor:
        return observation.new_zeros(*observation.shape[:-1], self.net.hidden_dim)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key)
        last = None if self.last_action_key is None else tensordict.get(self.last_action_key)
        x = self.net.inputs(obs, last)  # [*B, (T,) N, in]
        hidden = tensordict.get(self.hidden_key, None)
        is_init = tensordict.get(self.is_init_key, None)
        if recurrent_mode():
            if tensordict.ndim < 1:
                raise ValueError("recurrent mode needs a time dimension: batch [*B, T]")
            t_dim = tensordict.ndim - 1
            h = (
                self._zero_state(obs.select(t_dim, 0))
                if hidden is None
                else hidden.select(t_dim, 0)
            )
            # one fused unroll per segment between the times where some sequence restarts
            # (is_init); whole-episode batches restart only at t=0: a single call
            starts = [0]
            if is_init is not None:
                init = is_init.reshape(*is_init.shape[: t_dim + 1])  # [*B, T]
                h = h.masked_fill(init.select(t_dim, 0).reshape(*h.shape[:-2], 1, 1), 0.0)
                restart = init.flatten(0, t_dim - 1).any(0) if t_dim > 0 else init
                starts += [t for t in restart.nonzero().flatten().tolist() if t > 0]
            bounds = starts + [x.shape[t_dim]]
            hs = []
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if a > 0:  # zero the state of the sequences that restart here
                    reset = is_init.select(t_dim, a).reshape(*h.shape[:-2], 1, 1)
                    h = h.masked_fill(reset, 0.0)
                hseq = self.net.trunk(x.narrow(t_dim, a, b - a), h, t_dim)
                hs.append(hseq)
                h = hseq.select(t_dim, b - a - 1)
            h = torch.cat(hs, t_dim)
        else:
            h = self._zero_state(obs) if hidden is None else hidden
            if is_init is not None:
                h = h.masked_fill(is_init.reshape(*h.shape[:-2], 1, 1), 0.0)
            t_dim = x.dim() - 2
            h = self.net.trunk(x.unsqueeze(t_dim), h, t_dim).squeeze(t_dim)
        tensordict.set(self.out_key, self._head(h, tensordict))
        if self.features_key is not None:
            tensordict.set(self.features_key, h)
        set_next(tensordict, self.hidden_key, h)
        return tensordict


class LastActionWriter(TensorDictModuleBase):
    """Policy step that writes the one-hot chosen action ``[*B, N, A]`` at
    ``("next", *out_key)``: after ``step_mdp`` it is the last action the recurrent agents
    read at the next step (the env's ``TensorDictPrimer`` zeroes it at reset)."""

    def __init__(
        self,
        n_actions: int,
        action_key: NestedKey = ("agents", "action"),
        out_key: NestedKey = ("agents", "last_action"),
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.action_key, self.out_key = unravel_key(action_key), unravel_key(out_key)
        self.in_keys = [self.action_key]
        self.out_keys = [unravel_key(("next", self.out_key))]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self.action_key)
        one_hot = torch.nn.functional.one_hot(action.long(), self.n_actions).float()
        set_next(tensordict, self.out_key, one_hot)
        return tensordict
