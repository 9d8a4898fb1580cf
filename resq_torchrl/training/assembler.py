"""Complete episodes from a torchrl collector's rollouts, assembled with tensor operations.

torchrl's ``Collector(trajs_per_batch=k)`` hands out ``k`` complete, padded episodes per
batch, which is what :class:`~resq_torchrl.data.EpisodeReplayBuffer` stores. It assembles
them in Python, one trajectory at a time: every rollout is sorted by trajectory id, sliced
into one TensorDict per trajectory (an indexing of every entry), the slices of a trajectory
are concatenated when it ends, and every emitted episode is copied, padded and stacked. The
work grows with the number of trajectories: on VMAS balance with 256 envs it took 34% of
the collection time (profiled: 5.1 of 14.9 s), and with thousands of envs on a GPU it
would be most of it. torchrl has no vectorised alternative, so this module is one.

:class:`EpisodeAssembler` keeps the episodes in a pool of slots ``[S, max_len]`` (the
structure of a rollout step), one slot per env in flight. A rollout ``[n_envs, T]`` is cut
into segments at the steps where some episode ends; each segment is one indexed write into
the envs' slots, whatever the number of envs. An ended episode's slot joins the queue of
complete episodes as it is (no copy) and its env takes a free slot; once
``episodes_per_batch`` are queued, a batch ``[episodes_per_batch, L]`` (``L`` the longest of
them) is one gather of the oldest slots, zero-padded, with ``("collector", "mask")`` marking
the real steps, after which the slots are cleared and free again (the pool grows when more
episodes wait than it holds). The content is torchrl's padded ``trajs_per_batch`` batches',
bit for bit; the order is the order the episodes ended (env index within one step) rather
than torchrl's trajectory-id order within a rollout (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from tensordict import TensorDictBase

from resq_torchrl.errors import ConfigError

MASK_KEY = ("collector", "mask")
DONE_KEY = ("next", "done")


class EpisodeAssembler:
    """Iterate over ``collector`` (rollouts ``[n_envs, T]``, time last) and yield batches of
    ``episodes_per_batch`` complete episodes ``[episodes_per_batch, L]``.

    Args:
        collector: a torchrl ``Collector`` without ``trajs_per_batch`` (flat rollouts).
        episodes_per_batch: complete episodes per yielded batch.
        max_len: the longest possible episode (the env's step limit); a longer one raises a
            :class:`~resq_torchrl.errors.ConfigError`.

    Storage: a pool of episode slots ``[S, max_len]`` (the structure of a rollout step);
    each env writes into its own slot. When an episode ends its slot joins the queue of
    complete episodes as it is (no copy) and the env takes a free slot; a batch is one
    gather of the oldest queued slots, after which they are free again. The pool grows when
    more episodes wait than it holds. The assembler forwards every other attribute to the
    collector (``shutdown``, ``update_policy_weights_``, ...); its own runtime (episodes in
    flight and waiting) is :meth:`state_dict` / :meth:`load_state_dict`.
    """

    def __init__(self, collector, episodes_per_batch: int, max_len: int) -> None:
        if episodes_per_batch < 1 or max_len < 1:
            raise ValueError(
                f"episodes_per_batch and max_len must be >= 1, got {episodes_per_batch}, {max_len}"
            )
        self.collector = collector
        self.episodes_per_batch = int(episodes_per_batch)
        self.max_len = int(max_len)
        self._pool: TensorDictBase | None = None  # [S, max_len]
        self._slot: torch.Tensor | None = None  # [n_envs] the slot each env writes into
        self._length: torch.Tensor | None = None  # [S] steps written per slot
        self._ready: list[int] = []  # slots of complete episodes, oldest first
        self._free: list[int] = []
        self._rollouts: Iterator[TensorDictBase] | None = None

    def __getattr__(self, name: str):
        # only reached for attributes the assembler lacks: the collector's
        if name == "collector":
            raise AttributeError(name)
        return getattr(self.collector, name)

    # ------------------------------------------------------------------ assembling
    def _allocate(self, step: TensorDictBase) -> None:
        """A pool for the episodes in flight and one batch waiting; ``step`` is ``[n_envs]``."""
        n_envs = step.batch_size[0]
        size = n_envs + self.episodes_per_batch
        self._pool = step[:1].unsqueeze(1).expand(size, self.max_len).clone().zero_()
        self._length = torch.zeros(size, dtype=torch.long, device=step.device)
        self._slot = torch.arange(n_envs, device=step.device)
        self._free = list(range(n_envs, size))
        self._ready = []

    def _grow(self, extra: int) -> None:
        size = self._pool.batch_size[0]
        more = self._pool[:1].expand(extra, self.max_len).clone().zero_()
        self._pool = torch.cat([self._pool, more], 0)
        self._length = torch.cat([self._length, self._length.new_zeros(extra)])
        self._free.extend(range(size, size + extra))

    def add(self, rollout: TensorDictBase) -> None:
        """Write a rollout ``[n_envs, T]`` into the episodes in flight and queue the episodes
        that end in it."""
        if rollout.ndim != 2:
            raise ValueError(
                f"EpisodeAssembler needs rollouts [n_envs, T], got batch {tuple(rollout.shape)}"
            )
        steps = rollout.batch_size[1]
        if self._pool is None:
            self._allocate(rollout[:, 0])
        done = rollout.get(DONE_KEY).reshape(rollout.batch_size)  # [n_envs, T]
        # segments between the steps where some episode ends: within one, every env's steps
        # extend its episode in flight contiguously, so a segment is one indexed write
        ends = done.any(0).nonzero().flatten().tolist()  # one sync per rollout
        if not ends or ends[-1] != steps - 1:
            ends.append(steps - 1)
        keys = list(self._pool.keys(include_nested=True, leaves_only=True))
        src = [rollout.get(k) for k in keys]
        start = 0
        for end in ends:
            width = end + 1 - start
            length = self._length[self._slot]  # [n_envs]
            if int(length.max()) + width > self.max_len:
                raise ConfigError(
                    f"an episode ran past max_len={self.max_len} steps without ending: set "
                    "the env's max_steps (the replay's episode length) to its real limit"
                )
            slots = length.unsqueeze(-1) + torch.arange(width, device=done.device)
            rows = self._slot.unsqueeze(-1)
            for key, x in zip(keys, src, strict=True):
                self._pool.get(key)[rows, slots] = x[:, start : end + 1]
            self._length[self._slot] = length + width
            finished = done[:, end].nonzero().flatten().tolist()
            if finished:
                self._finish(finished)
            start = end + 1

    def _finish(self, envs: list[int]) -> None:
        """Queue the slots of ``envs``' ended episodes; give those envs free slots."""
        if len(self._free) < len(envs):
            self._grow(max(len(envs), self.episodes_per_batch))
        new = self._free[: len(envs)]
        del self._free[: len(envs)]
        index = torch.tensor(envs, device=self._slot.device)
        self._ready.extend(self._slot[index].tolist())
        self._slot[index] = torch.tensor(new, device=self._slot.device)

    def ready(self) -> int:
        """Complete episodes waiting for a batch."""
        return len(self._ready)

    def pop(self) -> TensorDictBase:
        """The oldest ``episodes_per_batch`` complete episodes ``[episodes_per_batch, L]``,
        ``L`` the longest of them, zero after each episode's end."""
        k = self.episodes_per_batch
        if len(self._ready) < k:
            raise RuntimeError(f"{len(self._ready)} complete episodes, {k} needed for a batch")
        taken = self._ready[:k]
        del self._ready[:k]
        index = torch.tensor(taken, device=self._length.device)
        lengths = self._length[index]
        width = int(lengths.max())
        batch = self._pool[index, :width]  # a copy
        mask = torch.arange(width, device=index.device) < lengths.unsqueeze(-1)
        self._clear(index)
        self._free.extend(taken)
        batch.set(MASK_KEY, mask)
        return batch

    def _clear(self, index: torch.Tensor) -> None:
        """Zero the slots ``index`` (a finished episode's steps never leak into the padding
        of the next one written there)."""
        for x in self._pool.values(include_nested=True, leaves_only=True):
            x.index_fill_(0, index, 0)
        self._length.index_fill_(0, index, 0)

    def __iter__(self) -> Iterator[TensorDictBase]:
        if self._rollouts is None:  # one iterator of the collector for the whole run
            self._rollouts = iter(self.collector)
        while True:
            while len(self._ready) < self.episodes_per_batch:
                rollout = next(self._rollouts, None)
                if rollout is None:  # the collector ended (a finite budget)
                    return
                self.add(rollout)
            yield self.pop()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The episodes in flight and waiting: ``inflight`` ``[n_envs, W]`` (each env's
        episode so far) with ``length`` ``[n_envs]``, and ``ready`` ``[r, W]`` (complete
        episodes, oldest first) with ``ready_length`` ``[r]``, ``W`` the longest of them (the
        zeros after it are not saved); ``None`` before the first rollout."""
        if self._pool is None:
            return None
        ready = torch.tensor(self._ready, dtype=torch.long, device=self._length.device)
        length, ready_length = self._length[self._slot], self._length[ready]
        # only the steps written so far: the padding after them is zeros
        width = max(1, int(torch.cat([length, ready_length]).max()))
        return {
            "inflight": self._pool[self._slot, :width],
            "length": length,
            "ready": self._pool[ready, :width],
            "ready_length": ready_length,
        }

    def load_state_dict(self, state: Mapping | None) -> None:
        if state is None:
            return
        inflight, ready = state["inflight"], state["ready"]
        (n_envs, width), r = inflight.batch_size, ready.batch_size[0]
        longest = int(torch.cat([state["length"], state["ready_length"]]).max())
        if longest > self.max_len:
            raise ConfigError(
                f"the checkpoint holds episodes of {longest} steps, more than max_len="
                f"{self.max_len}: resume with the env's max_steps of the run that wrote it"
            )
        carried = getattr(self.collector, "_carrier", None)
        if carried is not None and carried.batch_size[:1] != inflight.batch_size[:1]:
            raise ConfigError(
                f"the checkpoint holds episodes of {n_envs} envs, this run has "
                f"{carried.batch_size[0]}: resume with the n_envs of the run that wrote it"
            )
        self._allocate(inflight[:, 0])
        if r + n_envs > self._pool.batch_size[0]:
            self._grow(r + n_envs - self._pool.batch_size[0])
        self._pool[:n_envs, :width] = inflight
        self._length[:n_envs] = state["length"]
        ready_slots = torch.arange(n_envs, n_envs + r, device=self._length.device)
        if r:
            self._pool[ready_slots, :width] = ready
            self._length[ready_slots] = state["ready_length"]
        self._ready = ready_slots.tolist()
        self._free = [s for s in range(self._pool.batch_size[0]) if s >= n_envs + r]

    def load_trajectories(
        self, partial: Mapping[int, TensorDictBase], complete: list, carrier: TensorDictBase
    ) -> None:
        """Take over the trajectories torchrl's ``trajs_per_batch`` loop was assembling (in a
        checkpoint written before this class): ``partial`` maps a trajectory id to its steps
        so far ``[k]``, placed in the slot of the env whose carried trajectory id it is
        (``carrier``, the collector's next input ``[n_envs]``); ``complete`` holds complete
        episodes ``[k]`` not yet handed out, queued in their order."""
        ids = carrier.get(("collector", "traj_ids")).reshape(-1)
        steps_of = [*partial.values(), *complete]
        if not steps_of:
            return
        if self._pool is None:
            self._allocate(steps_of[0][:1].exclude(MASK_KEY).expand(ids.numel()))
        for tid, steps in partial.items():
            env = (ids == int(tid)).nonzero().flatten()
            if env.numel() != 1:
                raise ValueError(f"trajectory {tid} in flight belongs to no env of the carrier")
            slot, k = int(self._slot[int(env)]), steps.batch_size[0]
            self._pool[slot, :k] = steps.exclude(MASK_KEY)
            self._length[slot] = k
        for steps in complete:
            if not self._free:
                self._grow(self.episodes_per_batch)
            slot, k = self._free.pop(0), steps.batch_size[0]
            self._pool[slot, :k] = steps.exclude(MASK_KEY)
            self._length[slot] = k
            self._ready.append(slot)


__all__ = ["EpisodeAssembler"]
