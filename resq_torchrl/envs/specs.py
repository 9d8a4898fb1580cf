"""Specs shared by the library's own cooperative envs (docs/design.md vocabulary)."""

from __future__ import annotations

import torch
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase


def set_team_specs(env: EnvBase, n_agents: int, n_actions: int, obs_dim: int, state_dim: int):
    """Give a batched ``env`` (``batch_size=[B]``) the specs of a cooperative team game:

    ``("agents", "observation")`` ``[B, N, obs_dim]``, ``("agents", "action_mask")``
    ``[B, N, A]`` bool, ``"state"`` ``[B, state_dim]``, ``("agents", "action")`` ``[B, N]``
    categorical, team ``"reward"`` ``[B, 1]``, ``"done"``/``"terminated"``/``"truncated"``
    ``[B, 1]`` bool.
    """
    b, dev = env.batch_size, env.device
    env.observation_spec = Composite(
        agents=Composite(
            observation=Unbounded(shape=(*b, n_agents, obs_dim), device=dev),
            action_mask=Categorical(
                2, shape=(*b, n_agents, n_actions), dtype=torch.bool, device=dev
            ),
            shape=(*b, n_agents),
            device=dev,
        ),
        state=Unbounded(shape=(*b, state_dim), device=dev),
        shape=b,
        device=dev,
    )
    env.action_spec = Composite(
        agents=Composite(
            action=Categorical(n_actions, shape=(*b, n_agents), device=dev),
            shape=(*b, n_agents),
            device=dev,
        ),
        shape=b,
        device=dev,
    )
    env.reward_spec = Composite(reward=Unbounded(shape=(*b, 1), device=dev), shape=b)
    env.done_spec = Composite(
        {
            k: Categorical(2, shape=(*b, 1), dtype=torch.bool, device=dev)
            for k in ("done", "terminated", "truncated")
        },
        shape=b,
    )


def check_actions(action: torch.Tensor, shape: tuple, n_actions: int) -> None:
    """Integer actions of ``shape`` in ``[0, n_actions)``, what the library's own envs index
    with: ``-1`` or a truncated ``0.7`` would pick another payoff cell or move in silence.
    On an accelerator the range is asserted on the device (no host sync per step)."""
    if action.shape != shape or action.is_floating_point():
        raise ValueError(
            f"expected integer actions of shape {shape}, got {action.dtype} {tuple(action.shape)}"
        )
    in_range = ((action >= 0) & (action < n_actions)).all()
    if action.device.type != "cpu":
        torch._assert_async(in_range, f"actions must lie in [0, {n_actions})")
    elif not bool(in_range):
        raise ValueError(f"actions must lie in [0, {n_actions}), got {action.unique()}")
