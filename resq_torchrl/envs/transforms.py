"""Transforms that bring a third-party multi-agent env to the library's vocabulary
(docs/design.md): a team ``"reward"`` ``[*B, 1]``, a ``"state"`` ``[*B, S]``, an
``("agents", "action_mask")`` ``[*B, N, A]``.

torchrl has no transform that reduces per-agent rewards to a team reward or that writes a
constant action mask (its ``ActionMask`` reads a mask the env already writes), so these two
are written here; the state is torchrl's
``FlattenObservation`` over the agent and feature dims (:func:`stacked_state`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import Categorical, Composite, TensorSpec, Unbounded
from torchrl.envs import FlattenObservation, Transform

AGENT_REWARD_KEY = ("agents", "reward")
OBS_KEY = ("agents", "observation")
MASK_KEY = ("agents", "action_mask")
ACTION_KEY = ("agents", "action")


class TeamReward(Transform):
    """Per-agent reward ``in_key`` ``[*B, N, 1]`` -> team reward ``out_key`` ``[*B, 1]``.

    Args:
        reduction: ``"mean"`` (BenchMARL's convention for value-factorization methods: a
            shared reward stays the same number) or ``"sum"`` (individual rewards add up to
            the team's).
        in_key, out_key: where the per-agent and team rewards live.
        keep_agent_reward: keep ``in_key`` next to the team reward (default: drop it, the
            replay buffer then does not store it).
    """

    def __init__(
        self,
        reduction: str = "mean",
        in_key: NestedKey = AGENT_REWARD_KEY,
        out_key: NestedKey = "reward",
        keep_agent_reward: bool = False,
    ):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        super().__init__(in_keys=[in_key], out_keys=[out_key])
        self.reduction = reduction
        self.keep_agent_reward = keep_agent_reward

    def _call(self, next_td: TensorDictBase) -> TensorDictBase:
        (in_key,), (out_key,) = self.in_keys, self.out_keys
        reward = next_td.get(in_key, None)
        if reward is None:
            raise KeyError(f"TeamReward: the env's step output has no per-agent reward {in_key}")
        if reward.dim() < 2 or reward.shape[-1] != 1:
            raise ValueError(f"TeamReward: {in_key} must be [*B, N, 1], got {tuple(reward.shape)}")
        team = reward.mean(-2) if self.reduction == "mean" else reward.sum(-2)
        next_td.set(out_key, team)
        if not self.keep_agent_reward:
            next_td.exclude(in_key, inplace=True)
        return next_td

    def transform_reward_spec(self, reward_spec: Composite) -> Composite:
        (in_key,), (out_key,) = self.in_keys, self.out_keys
        agent_spec = reward_spec[in_key]
        shape = agent_spec.shape[:-2] + agent_spec.shape[-1:]
        reward_spec[out_key] = Unbounded(shape=shape, device=agent_spec.device)
        if not self.keep_agent_reward:
            del reward_spec[in_key]
        return reward_spec

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase):
        return tensordict_reset


class TruncationOnlyIfNotTerminated(Transform):
    """``truncated`` becomes ``truncated & ~terminated``: a step that ends the episode and
    hits the time limit at once is a termination only, as the library's own envs report it
    (torchrl's ``StepCounter`` sets ``truncated`` at the limit whatever ``terminated`` says;
    ``done`` is unchanged)."""

    def __init__(self, truncated_key: NestedKey = "truncated", terminated_key="terminated"):
        super().__init__(in_keys=[truncated_key, terminated_key], out_keys=[truncated_key])

    def _call(self, next_td: TensorDictBase) -> TensorDictBase:
        truncated, terminated = self.in_keys
        next_td.set(truncated, next_td.get(truncated) & ~next_td.get(terminated))
        return next_td

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase):
        return tensordict_reset


class FixedActionMask(Transform):
    """Writes a constant ``mask_key`` ``[*B, N, A]`` from a per-agent ``mask`` ``[N, A]``
    (``None``: every action available, for envs without masks) and sets it as the mask of
    the categorical action spec at ``action_key``, so that ``env.rand_action`` (and
    ``check_env_specs``) never sample an unavailable action; masked greedy and
    ``EGreedyModule`` read the mask from the data.

    A fixed mask serves envs whose agents have fixed, differing action sets (heterogeneous
    agents padded to one action count, see ``envs/pettingzoo.py``).
    """

    def __init__(
        self,
        mask: torch.Tensor | None = None,
        action_key: NestedKey = ACTION_KEY,
        mask_key: NestedKey = MASK_KEY,
    ):
        if mask is not None and (
            mask.dim() != 2 or mask.dtype != torch.bool or not mask.any(-1).all()
        ):
            raise ValueError(
                f"mask must be [N, A] bool with an available action per agent, got {mask}"
            )
        super().__init__(in_keys=[], out_keys=[mask_key])
        self.action_key = action_key
        self.register_buffer("mask", mask)

    def _agent_mask(self, action: TensorSpec) -> torch.Tensor:
        """``[N, A]`` on the action spec's device."""
        if not isinstance(action, Categorical):
            raise ValueError(f"{self.action_key} must be a Categorical action spec, got {action}")
        n_agents, n = action.shape[-1], action.space.n
        if self.mask is None:
            return torch.ones(n_agents, n, dtype=torch.bool, device=action.device)
        if self.mask.shape != (n_agents, n):
            raise ValueError(
                f"mask is {list(self.mask.shape)} but {self.action_key} has {n_agents} agents "
                f"and {n} actions"
            )
        return self.mask.to(action.device)

    def _write(self, td: TensorDictBase) -> TensorDictBase:
        mask = self._agent_mask(self.parent.full_action_spec[self.action_key])
        td.set(self.out_keys[0], mask.expand(*td.batch_size, *mask.shape).clone())
        return td

    def _call(self, next_td: TensorDictBase) -> TensorDictBase:
        return self._write(next_td)

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase):
        return self._write(tensordict_reset)

    def transform_action_spec(self, action_spec: Composite) -> Composite:
        action = action_spec[self.action_key]
        action.update_mask(self._agent_mask(action).expand(action.shape + (action.space.n,)))
        return action_spec

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        action = self.parent.full_action_spec[self.action_key]
        observation_spec[self.out_keys[0]] = Categorical(
            2, shape=(*action.shape, action.space.n), dtype=torch.bool, device=action.device
        )
        return observation_spec


def stacked_state(obs_key: NestedKey = OBS_KEY, state_key: NestedKey = "state") -> Transform:
    """``state`` ``[*B, N * obs]``: the agents' observations ``[*B, N, obs]`` concatenated,
    for envs without a global state (torchrl's ``FlattenObservation``)."""
    return FlattenObservation(-2, -1, in_keys=[obs_key], out_keys=[state_key])


__all__ = ["FixedActionMask", "TeamReward", "stacked_state"]
