"""The run's data collector, chosen by ``cfg.collector.type``: torchrl's collectors
(``torchrl.collectors``), returning batches of complete episodes (``trajs_per_batch``,
padded) that :class:`~resq_torchrl.data.EpisodeReplayBuffer` stores whole."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from resq_torchrl.errors import ConfigError

#: collector types ``collector.type`` accepts
COLLECTORS = ("single",)


def make_collector(cfg: Mapping, env: EnvBase, policy, device: torch.device):
    """The collector of a run: ``cfg["n_envs"] * cfg["rollout_steps"]`` frames per poll,
    yielding ``cfg["episodes_per_batch"]`` complete episodes per batch, endless (the trainer
    stops it at ``total_frames``)."""
    kind = str(cfg.get("collector", {}).get("type", "single"))
    if kind not in COLLECTORS:
        raise ConfigError(f"unknown collector {kind!r}; choose one of: {', '.join(COLLECTORS)}")
    return Collector(
        env,
        policy,
        frames_per_batch=int(cfg["n_envs"]) * int(cfg["rollout_steps"]),
        # endless: the training loop stops at total_frames. The collector's own budget counts
        # every polled step, also those of episodes still running when it ends (dropped),
        # and so stopped up to a whole batch of episodes short of it.
        total_frames=-1,
        trajs_per_batch=int(cfg["episodes_per_batch"]),
        traj_format="padded",
        device=device,
        # torchrl 0.14's preallocated output buffer drops the agent dimension of the
        # root "agents" group when the policy writes under ("next", "agents"); stacking the
        # steps instead keeps every group's batch size.
        use_buffers=False,
    )


__all__ = ["COLLECTORS", "make_collector"]
