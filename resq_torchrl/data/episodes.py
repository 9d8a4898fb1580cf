"""Replay of whole episodes assembled from batched collector output.

torchrl provides the storage and sampling (``TensorDictReplayBuffer`` over a
``LazyTensorStorage`` whose items are episodes padded to ``max_len`` steps, uniform
sampling). What it does not provide is assembling whole episodes from ``[n_envs, T]``
collector batches that cut episodes at arbitrary points (``split_trajectories`` pads within
one batch only), so that part is written here: one pending episode per env, written step by
step (vectorised over envs) and moved to the storage when its ``("next", "done")`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

#: Entries a collector or policy writes that the losses recompute and need not be stored.
DEFAULT_EXCLUDE: tuple[NestedKey, ...] = (
    ("agents", "rnn_hidden"),
    ("next", "agents", "rnn_hidden"),
    ("agents", "action_value"),
    ("agents", "chosen_action_value"),
    ("collector", "traj_ids"),
)


class EpisodeReplayBuffer:
    """Episodes ``[max_len]`` (padded, ``("collector", "mask")`` marks real steps); capacity
    counted in episodes, oldest overwritten first; samples ``[batch_size, T]`` with ``T`` the
    longest episode of the sample.

    Args:
        capacity: episodes kept (paper: 5000).
        max_len: longest possible episode (the env's step limit).
        batch_size: episodes per sample (paper: 32).
        device: storage device (``None``: the device of the first data stored).
        exclude: keys dropped before storing (recomputed by the losses).
    """

    mask_key: NestedKey = ("collector", "mask")

    def __init__(
        self,
        capacity: int = 5000,
        max_len: int = 200,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        exclude: Sequence[NestedKey] = DEFAULT_EXCLUDE,
    ) -> None:
        if capacity < 1 or max_len < 1 or batch_size < 1:
            raise ValueError(
                f"capacity, max_len and batch_size must be >= 1, got {capacity}, {max_len}, "
                f"{batch_size}"
            )
        self.capacity, self.max_len, self.batch_size = capacity, max_len, batch_size
        self.exclude = tuple(exclude)
        self.buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity, device="auto" if device is None else device),
            sampler=RandomSampler(),
            batch_size=batch_size,
        )
        self._pending: TensorDictBase | None = None  # [n_envs, max_len]
        self._ptr: torch.Tensor | None = None  # [n_envs] next free step of each pending episode
        self.episodes_added = 0

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, batch: TensorDictBase) -> int:
        """Add collector output ``[n_envs, T]`` (time last); returns the number of episodes
        completed (and stored) by it."""
        if batch.ndim != 2:
            raise ValueError(f"expected collector output [n_envs, T], got batch {batch.shape}")
        batch = batch.exclude(*self.exclude)
        n_envs, steps = batch.shape
        if self._pending is None or self._pending.shape[0] != n_envs:
            self._pending = (
                batch[:, :1].expand(n_envs, self.max_len).clone().zero_()
            )  # allocate once, same structure as the data
            self._pending.set(
                self.mask_key,
                torch.zeros(n_envs, self.max_len, dtype=torch.bool, device=batch.device),
            )
            self._ptr = torch.zeros(n_envs, dtype=torch.long, device=batch.device)
        envs = torch.arange(n_envs, device=batch.device)
        completed = 0
        for t in range(steps):
            if (self._ptr >= self.max_len).any():
                raise ValueError(
                    f"an episode is longer than max_len={self.max_len}: set max_len to the "
                    "env's step limit"
                )
            step = batch[:, t].clone(False)
            step.set(self.mask_key, torch.ones(n_envs, dtype=torch.bool, device=batch.device))
            self._pending[envs, self._ptr] = step
            self._ptr += 1
            done = step.get(("next", "done")).reshape(n_envs)
            if done.any():
                idx = done.nonzero().squeeze(-1)
                episodes = self._pending[idx].clone()
                episodes.masked_fill_(~episodes.get(self.mask_key), 0)
                self.buffer.extend(episodes)
                self._pending.get(self.mask_key)[idx] = False
                self._ptr[idx] = 0
                completed += len(idx)
        self.episodes_added += completed
        return completed

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """``[batch_size, T]`` episodes, ``T`` the longest real length among them."""
        if len(self.buffer) == 0:
            raise RuntimeError("the replay buffer holds no complete episode yet")
        sample = self.buffer.sample(batch_size or self.batch_size)
        length = int(sample.get(self.mask_key).sum(-1).max())
        return sample[:, :length]
