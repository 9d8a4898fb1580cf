"""Replay of whole episodes for recurrent value-factorization training.

torchrl does the work: a ``Collector`` with ``trajs_per_batch`` yields complete episodes,
reassembled across its internal batches, zero-padded along time with a
``("collector", "mask")`` entry; a ``TensorDictReplayBuffer`` over a ``LazyTensorStorage``
stores them and samples uniformly. This class only pads every episode to one length
(the storage needs a fixed item shape), drops entries the losses recompute, and trims
samples to their longest episode.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tensordict import TensorDictBase, pad
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from resq_torchrl.data.priority import TensorPrioritizedSampler

#: Entries a collector or policy writes that the losses recompute and need not be stored.
DEFAULT_EXCLUDE: tuple[NestedKey, ...] = (
    ("agents", "rnn_hidden"),
    ("next", "agents", "rnn_hidden"),
    ("agents", "action_value"),
    ("agents", "chosen_action_value"),
    ("agents", "features"),  # QTRAN's agent features, recomputed by its loss
    ("agents", "action_value_mean"),  # IQN agents' mean over acting fractions
    ("collector", "traj_ids"),
)


class EpisodeReplayBuffer:
    """Episodes stored as ``[max_len]`` items (``("collector", "mask")`` marks real steps);
    capacity counted in episodes, oldest overwritten first; samples ``[batch_size, T]`` with
    ``T`` the longest episode in the sample.

    Args:
        capacity: episodes kept (paper: 5000).
        max_len: longest possible episode (the env's step limit).
        batch_size: episodes per sample (paper: 32).
        device: storage device (``None``: the device of the first data stored).
        exclude: keys dropped before storing (recomputed by the losses).
        prioritized: sample episodes with probability ``p_i^alpha / sum_k p_k^alpha``
            instead of uniformly; ``p_i`` is the largest
            absolute TD error over the real steps of episode ``i`` at its last replay (new
            episodes get the largest priority seen), set by :meth:`update_priority`
            (:class:`~resq_torchrl.data.priority.TensorPrioritizedSampler`: torchrl's
            ``PrioritizedSampler`` needs a compiled extension that fails to load with the
            pinned torch). Samples then carry importance weights ``"_weight"`` ``[B]``
            (``(N p_i)^-beta / max``), which the losses use to weight their means. Off by
            default (the papers sample uniformly); a remedy for rare rewards.
        alpha, beta: prioritization exponent and importance-correction exponent.

    Example:
        >>> from torchrl.collectors import Collector
        >>> collector = Collector(env, policy, frames_per_batch=..., trajs_per_batch=8)
        >>> buffer = EpisodeReplayBuffer(capacity=5000, max_len=200)
        >>> for episodes in collector:   # [8, T] padded, with ("collector", "mask")
        ...     buffer.extend(episodes)
        ...     batch = buffer.sample()  # [32, T'] for the loss
    """

    mask_key: NestedKey = ("collector", "mask")

    def __init__(
        self,
        capacity: int = 5000,
        max_len: int = 200,
        batch_size: int = 32,
        device: torch.device | str | None = None,
        exclude: Sequence[NestedKey] = DEFAULT_EXCLUDE,
        prioritized: bool = False,
        alpha: float = 0.6,
        beta: float = 0.4,
    ) -> None:
        if capacity < 1 or max_len < 1 or batch_size < 1:
            raise ValueError(
                f"capacity, max_len and batch_size must be >= 1, got {capacity}, {max_len}, "
                f"{batch_size}"
            )
        self.capacity, self.max_len, self.batch_size = capacity, max_len, batch_size
        self.exclude = tuple(exclude)
        self.prioritized = bool(prioritized)
        sampler = (
            TensorPrioritizedSampler(capacity, alpha=float(alpha), beta=float(beta))
            if self.prioritized
            else RandomSampler()
        )
        self.buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity, device="auto" if device is None else device),
            sampler=sampler,
            batch_size=batch_size,
        )
        self.episodes_added = 0

    def __len__(self) -> int:
        return len(self.buffer)

    def extend(self, episodes: TensorDictBase) -> int:
        """Store padded episodes ``[k, T]`` (a collector's ``trajs_per_batch`` output);
        returns ``k``."""
        if episodes.ndim != 2 or self.mask_key not in episodes.keys(True):
            raise ValueError(
                f"expected padded episodes [k, T] with {self.mask_key!r} (a Collector with "
                f"trajs_per_batch), got batch {tuple(episodes.shape)} with keys "
                f"{sorted(map(str, episodes.keys(True, True)))[:8]}..."
            )
        k, t = episodes.shape
        if t > self.max_len:
            raise ValueError(
                f"an episode of {t} steps is longer than max_len={self.max_len}: set max_len "
                "to the env's step limit"
            )
        episodes = episodes.exclude(*self.exclude)
        if t < self.max_len:
            episodes = pad(episodes, [0, 0, 0, self.max_len - t])
        self.buffer.extend(episodes)
        self.episodes_added += k
        return k

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """``[batch_size, T]`` episodes, ``T`` the longest real length among them."""
        if len(self.buffer) == 0:
            raise RuntimeError("the replay buffer holds no complete episode yet")
        sample = self.buffer.sample(batch_size or self.batch_size)
        length = int(sample.get(self.mask_key).sum(-1).max())
        return sample[:, :length]

    def update_priority(self, sample: TensorDictBase, key: NestedKey = "td_error") -> None:
        """Set the priorities of the episodes of ``sample`` (from :meth:`sample`, after a loss
        wrote its per-step absolute TD error ``[B, T, 1]`` at ``key``) to their largest error
        over real steps; padded steps never count. Does nothing without ``prioritized``."""
        if not self.prioritized:
            return
        error = sample.get(key).detach().reshape(sample.shape)
        real = sample.get(self.mask_key).reshape(sample.shape)
        priority = torch.where(real, error, 0.0).amax(-1)
        index = sample.get("index")  # [B, T]: the episode's index, repeated along time
        self.buffer.update_priority(index.reshape(sample.shape)[:, 0], priority)

    def dumps(self, path: str | Path, tag: int | None = None) -> None:
        """Write the stored episodes (torchrl's ``ReplayBuffer.dumps``: storage, sampler and
        writer state) to the directory ``path``, with ``tag`` (the trainer's frame count, to
        match it with its checkpoint). Crash-safe: the new copy is written beside ``path``
        and swapped in; until the swap ends, :meth:`loads` finds the previous copy."""
        path = Path(path)
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        self.buffer.dumps(tmp)
        meta = {"episodes_added": self.episodes_added, "tag": tag}
        (tmp / "episodes.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # a leftover of a crash mid-swap
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def stored_at(path: str | Path) -> Path | None:
        """The complete copy :meth:`dumps` left at ``path`` (or, after a crash mid-swap, the
        previous one beside it); ``None`` if there is none."""
        path = Path(path)
        for candidate in (path, path.with_name(path.name + ".old")):
            if (candidate / "episodes.json").exists():
                return candidate
        return None

    @staticmethod
    def tag_at(path: str | Path) -> int | None:
        """The ``tag`` :meth:`dumps` wrote with the copy at ``path`` (see :meth:`stored_at`)."""
        found = EpisodeReplayBuffer.stored_at(path)
        return (
            None if found is None else json.loads((found / "episodes.json").read_text()).get("tag")
        )

    def loads(self, path: str | Path) -> None:
        """Restore the episodes written by :meth:`dumps` (same capacity and ``max_len``)."""
        found = self.stored_at(path)
        if found is None:
            raise FileNotFoundError(f"no replay buffer written by dumps() at {path}")
        self.buffer.loads(found)
        self.episodes_added = json.loads((found / "episodes.json").read_text())["episodes_added"]
