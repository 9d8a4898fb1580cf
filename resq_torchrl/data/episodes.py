"""Replay of whole episodes for recurrent value-factorization training.

torchrl does the work: a ``Collector`` with ``trajs_per_batch`` yields complete episodes,
reassembled across its internal batches, zero-padded along time with a
``("collector", "mask")`` entry; a ``TensorDictReplayBuffer`` over a ``LazyTensorStorage``
stores them and samples uniformly. This class only pads every episode to one length
(the storage needs a fixed item shape), drops entries the losses recompute, trims samples
to their longest episode, and stores each step's content once: a collector's step ``t``
holds ``("next", k)`` equal to step ``t + 1``'s ``k`` (observation, state, masks, last
action, ...), so only the ``next`` entries of an episode's last step are kept, in the slot
after it, and the others are rebuilt by shifting at sampling (written by hand: torchrl's
storages keep every key of every step; its ``SliceSampler`` rebuilds nothing).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase, pad
from tensordict.utils import NestedKey
from torchrl.data import LazyTensorStorage, RandomSampler, TensorDictReplayBuffer

from resq_torchrl.data.priority import TensorPrioritizedSampler
from resq_torchrl.errors import UnsafeCheckpointError, is_whole

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

#: ``layout`` written with :meth:`EpisodeReplayBuffer.dumps`: episodes of ``max_len + 1``
#: slots, ``next`` copies of the following step not stored. Copies without it (written
#: before this layout) hold ``max_len`` slots with every ``next`` entry; ``loads`` converts.
LAYOUT = "shifted-next"


#: pickle opcodes that import or call code: a replay dump's pickles must have none
_CODE_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}
    | {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"}
)
#: what a replay dump (``EpisodeReplayBuffer.dumps``: torchrl's ``ReplayBuffer.dumps``, a
#: memory-mapped TensorDict storage) holds: tensors, JSON, the prioritized sampler's tensor
#: (loaded with ``weights_only=True``) and torchrl's ``prefetch.pkl``
_REPLAY_SUFFIXES = (".memmap", ".json", ".pt", ".pkl")


def check_replay_dump(path: str | Path) -> None:
    """Refuse a replay buffer directory that could run code when loaded: torchrl's
    ``ReplayBuffer.loads`` reads ``prefetch.pkl`` with ``pickle.load``, and a memory-mapped
    TensorDict may carry pickled non-tensor entries. Every ``*.pkl`` must be plain data (no
    opcode that imports or calls anything; read with ``pickletools``, never unpickled here)
    and every other file a tensor, JSON or ``weights_only`` file. Raises
    :class:`UnsafeCheckpointError` (one line)."""
    import pickletools

    for file in sorted(Path(path).rglob("*")):
        if not file.is_file():
            continue
        if not file.name.endswith(_REPLAY_SUFFIXES):
            raise UnsafeCheckpointError(
                f"refusing to load the replay buffer at {path}: {file.name} is not a file "
                "EpisodeReplayBuffer.dumps writes (tensors, JSON); it was not read"
            )
        if file.suffix == ".pkl":
            try:
                ops = {op.name for op, _, _ in pickletools.genops(file.read_bytes())}
            except Exception:  # not a pickle at all
                ops = {"unreadable"}
            if ops & (_CODE_OPCODES | {"unreadable"}):
                raise UnsafeCheckpointError(
                    f"refusing to load the replay buffer at {path}: {file.name} is a pickle "
                    "that imports or calls code, and a replay dump holds plain data only; it "
                    "was not run"
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
            pinned torch). Samples then carry importance weights ``"_weight"`` ``[B, T]`` (each
            episode's weight along its steps)
            (``(N P(i))^-beta / max``, ``P(i) = p_i^alpha / sum_k p_k^alpha``), which the
            losses use to weight their means. Off by
            default (the papers sample uniformly); a remedy for rare rewards.
        alpha, beta: prioritization exponent and importance-correction exponent.
        shift_next: store each step's content once (see the module docstring): every
            ``("next", k)`` whose ``k`` exists at the root with the same shape and equals it
            one step later within every episode of the first batch stored is rebuilt at
            sampling, bit for bit; later batches are checked too. About half the bytes of
            storing both; samples equal those of ``shift_next=False`` exactly.

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
        shift_next: bool = True,
    ) -> None:
        if capacity < 1 or max_len < 1 or batch_size < 1:
            raise ValueError(
                f"capacity, max_len and batch_size must be >= 1, got {capacity}, {max_len}, "
                f"{batch_size}"
            )
        sizes = {"capacity": capacity, "max_len": max_len, "batch_size": batch_size}
        for key, value in sizes.items():
            if not is_whole(value):
                raise ValueError(f"{key} must be a whole number, got {value!r}")
        capacity, max_len, batch_size = int(capacity), int(max_len), int(batch_size)
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
        self.shift_next = bool(shift_next)
        #: root keys ``k`` whose ``("next", k)`` is rebuilt from step ``t + 1`` (set by the
        #: first :meth:`extend`; ``()`` with ``shift_next=False``)
        self.shifted: tuple[NestedKey, ...] | None = None if self.shift_next else ()

    @property
    def slots(self) -> int:
        """Time slots of a stored episode: ``max_len`` plus, when ``next`` entries are
        rebuilt, one for the last step's."""
        return self.max_len + (1 if self.shift_next else 0)

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
        self._check_whole(episodes)
        episodes = episodes.exclude(*self.exclude)
        if self.shifted is None:
            self.shifted = self._shiftable(episodes)
        if t < self.slots:
            episodes = pad(episodes, [0, 0, 0, self.slots - t])
        if self.shifted:
            episodes = self._fold_next(episodes)
        self._check_layout(episodes)
        self.buffer.extend(episodes)
        self.episodes_added += k
        return k

    def _check_layout(self, episodes: TensorDictBase) -> None:
        """``episodes`` (as stored) hold the keys, per-step shapes and dtypes of the stored
        ones: another env's episodes, or a batch without a key, failed deep inside the
        storage (a broadcast error) or with a ``NoneType`` error."""
        if len(self.buffer) == 0:
            return
        stored = self.buffer.storage.get(torch.zeros(1, dtype=torch.long))

        def layout(td: TensorDictBase) -> dict:  # "index": what the buffer's writer adds
            return {
                k: (tuple(v.shape[2:]), v.dtype) for k, v in td.items(True, True) if k != "index"
            }

        mine, theirs = layout(episodes), layout(stored)
        if mine != theirs:
            missing = sorted(set(theirs) - set(mine), key=str)
            new = sorted(set(mine) - set(theirs), key=str)
            other = sorted((k for k in set(mine) & set(theirs) if mine[k] != theirs[k]), key=str)
            raise ValueError(
                f"these episodes do not match the stored ones (missing keys {missing}, new "
                f"keys {new}, other per-step shapes or dtypes {other}): one buffer per env"
            )

    def _check_whole(self, episodes: TensorDictBase) -> None:
        """Each row of ``episodes`` ``[k, T]`` one whole episode: its real steps a prefix
        (at least one), the last of them ``("next", "done")``. Partial trajectories (a
        collector without ``trajs_per_batch``, a rollout across resets) were stored, and the
        next batch then failed with a message blaming the env."""
        mask = episodes.get(self.mask_key).reshape(episodes.shape).bool()
        length = mask.sum(-1)
        steps = torch.arange(mask.shape[-1], device=mask.device)
        if not bool(((steps < length.unsqueeze(-1)) == mask).all() and (length > 0).all()):
            raise ValueError(
                f"{self.mask_key!r} must mark each row's real steps as a non-empty prefix "
                "(whole episodes padded at the end, as a Collector with trajs_per_batch "
                "writes them)"
            )
        done = episodes.get(("next", "done"), None)
        if done is not None:
            done = done.reshape(episodes.shape).bool()
            last = done.gather(-1, (length - 1).unsqueeze(-1))
            if not bool(last.all()):
                raise ValueError(
                    f"{int((~last).sum())} of {episodes.shape[0]} rows do not end with "
                    "('next', 'done'): the buffer stores whole episodes (a Collector with "
                    "trajs_per_batch; not partial trajectories)"
                )

    def _shiftable(self, episodes: TensorDictBase) -> tuple[NestedKey, ...]:
        """The root keys ``k`` of ``episodes`` ``[k, T]`` whose ``("next", k)`` equals ``k``
        one step later at every real step followed by a real step."""
        mask = episodes.get(self.mask_key)
        follows = mask[:, 1:] & mask[:, :-1]
        keys = []
        if self.max_len > 1 and not bool(follows.any()):
            return ()  # nothing to compare yet (one-step episodes only): store every key
        for key in episodes.keys(True, True):
            key = key if isinstance(key, tuple) else (key,)
            if (
                key[0] == "next"
                or key == self.mask_key
                or ("next", *key) not in episodes.keys(True, True)
            ):
                continue
            root, nxt = episodes.get(key), episodes.get(("next", *key))
            if root.shape != nxt.shape or root.dtype != nxt.dtype:
                continue
            if torch.equal(nxt[:, :-1][follows], root[:, 1:][follows]):
                keys.append(key)
        return tuple(keys)

    def _fold_next(self, episodes: TensorDictBase) -> TensorDictBase:
        """``episodes`` ``[k, slots]`` (padded) without the shifted ``next`` entries; the
        last real step's go to the slot after it, where the root holds only padding."""
        mask = episodes.get(self.mask_key)
        follows = mask[:, 1:] & mask[:, :-1]
        rows = torch.arange(mask.shape[0], device=mask.device)
        length = mask.sum(-1)
        for key in self.shifted:
            root, nxt = episodes.get(key, None), episodes.get(("next", *key), None)
            if root is None or nxt is None:
                raise ValueError(
                    f"these episodes lack {key if root is None else ('next', *key)!r}, which "
                    "the stored ones have: one buffer per env"
                )
            if not torch.equal(nxt[:, :-1][follows], root[:, 1:][follows]):
                name = "/".join(key)
                raise RuntimeError(
                    f"next/{name} differs from {name} one step later in an episode, unlike in "
                    "the first batch stored: this env's next entries cannot be rebuilt by "
                    "shifting (EpisodeReplayBuffer(shift_next=False) stores them; please "
                    "report the env)"
                )
            root = root.clone()
            root[rows, length] = nxt[rows, length - 1]
            episodes.set(key, root)
        return episodes.exclude(*[("next", *key) for key in self.shifted])

    def _unfold_next(self, data: TensorDictBase, length: int) -> TensorDictBase:
        """Episodes ``[B, >= length + 1]`` of the storage -> ``[B, length]`` with every
        ``next`` entry, equal to what was collected (root padding zero, as stored before)."""
        out = data[:, :length]
        if not self.shifted:
            return out
        mask = out.get(self.mask_key)
        following = data[:, 1 : length + 1].select(*self.shifted)
        out.get("next").update(following)
        for key in self.shifted:  # the slot after an episode held its last next entries
            value = out.get(key)
            real = mask.reshape(mask.shape + (1,) * (value.ndim - mask.ndim))
            out.set(key, torch.where(real, value, torch.zeros((), dtype=value.dtype)))
        return out

    def episodes(self, index: torch.Tensor | Sequence[int]) -> TensorDictBase:
        """Stored episodes ``[len(index), max_len]`` with every ``next`` entry, as collected
        and padded."""
        return self._unfold_next(self.buffer.storage.get(index), self.max_len)

    def sample(self, batch_size: int | None = None) -> TensorDictBase:
        """``[batch_size, T]`` episodes, ``T`` the longest real length among them."""
        if len(self.buffer) == 0:
            raise RuntimeError("the replay buffer holds no complete episode yet")
        if batch_size is not None and batch_size < 1:  # 0 took the default size in silence
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sample = self.buffer.sample(batch_size or self.batch_size)
        length = int(sample.get(self.mask_key).sum(-1).max())
        return self._unfold_next(sample, length)

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

    def dumps(self, path: str | Path, tag: int | None = None, keep_previous: bool = False) -> None:
        """Write the stored episodes (torchrl's ``ReplayBuffer.dumps``: storage, sampler and
        writer state) to the directory ``path``, with ``tag`` (the trainer's frame count, to
        match it with its checkpoint). Crash-safe: the new copy is written beside ``path``
        and swapped in; until the swap ends, :meth:`loads` finds the previous copy. With
        ``keep_previous`` the previous copy stays as ``<path>.prev`` (the checkpoint that
        refers to it may still be the latest one; the trainer removes it once the next
        checkpoint is written: :meth:`drop_previous`)."""
        path = Path(path)
        tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
        shutil.rmtree(tmp, ignore_errors=True)
        self.buffer.dumps(tmp)
        meta = {
            "episodes_added": self.episodes_added,
            "tag": tag,
            "layout": LAYOUT if self.shift_next else "plain",
            "shifted": [list(k) for k in self.shifted or ()],
        }
        (tmp / "episodes.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # a leftover of a crash mid-swap
            os.replace(path, old)
        os.replace(tmp, path)
        if keep_previous and old.exists():
            prev = self._previous(path)
            shutil.rmtree(prev, ignore_errors=True)
            os.replace(old, prev)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _previous(path: Path) -> Path:
        return path.with_name(path.name + ".prev")

    @staticmethod
    def drop_previous(path: str | Path) -> None:
        """Remove the copy :meth:`dumps` kept with ``keep_previous`` at ``<path>.prev``."""
        shutil.rmtree(EpisodeReplayBuffer._previous(Path(path)), ignore_errors=True)

    @staticmethod
    def stored_at(path: str | Path, tag: int | None = None) -> Path | None:
        """The complete copy :meth:`dumps` left at ``path`` (or, after a crash mid-swap, the
        previous one beside it); with ``tag``, the copy written with that tag among ``path``,
        ``<path>.old`` and ``<path>.prev``. ``None`` if there is none."""
        path = Path(path)
        candidates = [path, path.with_name(path.name + ".old")]
        if tag is not None:
            candidates.append(EpisodeReplayBuffer._previous(path))
        for candidate in candidates:
            meta = candidate / "episodes.json"
            if not meta.exists():
                continue
            if tag is None or json.loads(meta.read_text()).get("tag") == tag:
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
        """Restore the episodes written by :meth:`dumps` (same capacity and ``max_len``),
        converting a copy written in the other layout (or before layouts were recorded)."""
        found = self.stored_at(path)
        if found is None:
            raise FileNotFoundError(f"no replay buffer written by dumps() at {path}")
        check_replay_dump(found)  # before torchrl's loads unpickles anything in it
        meta = json.loads((found / "episodes.json").read_text())
        layout = meta.get("layout", "plain")
        self._check_same_shape(found, layout)
        if layout == (LAYOUT if self.shift_next else "plain"):
            self.buffer.loads(found)
            if self.shift_next:
                self.shifted = tuple(tuple(k) for k in meta["shifted"])
        else:
            self._convert(found, layout, meta)
        self.episodes_added = meta["episodes_added"]

    def _check_same_shape(self, found: Path, layout: str) -> None:
        """The dump at ``found`` was written by a buffer of this capacity, ``max_len`` and
        sampling: another ``max_len`` loaded cut every episode short in silence, another
        capacity or sampling failed deep inside tensordict or torchrl."""
        try:
            shape = json.loads((found / "storage" / "meta.json").read_text())["shape"]
        except (OSError, ValueError, KeyError):
            return  # an empty dump, or another storage: torchrl's own checks apply
        capacity, slots = int(shape[0]), int(shape[1])
        max_len = slots - (1 if layout == LAYOUT else 0)
        if (capacity, max_len) != (self.capacity, self.max_len):
            raise ValueError(
                f"the replay dump at {found} holds capacity={capacity} episodes of "
                f"max_len={max_len} steps; this buffer has capacity={self.capacity}, "
                f"max_len={self.max_len}: build it with the dump's"
            )
        if self.prioritized and not (found / "sampler").exists():
            # (a prioritized dump loads into a uniform buffer: the priorities are dropped)
            raise ValueError(
                f"the replay dump at {found} was written by a uniform buffer and holds no "
                "priorities: load it with prioritized=False"
            )

    def _convert(self, found: Path, layout: str, meta: dict) -> None:
        """Load a copy of the other layout into this buffer's, chunk by chunk, keeping each
        episode's index, the writer's cursor and the sampler's state (priorities)."""
        other = EpisodeReplayBuffer(
            self.capacity,
            self.max_len,
            self.batch_size,
            exclude=self.exclude,
            prioritized=self.prioritized,
            shift_next=layout == LAYOUT,
        )
        if other.shift_next:
            other.shifted = tuple(tuple(k) for k in meta["shifted"])
        # torchrl's loads would copy the whole dump into memory first (several GB for a
        # full predator-prey replay): read it memory-mapped, one chunk at a time
        stored = TensorDict.load_memmap(found / "storage")
        n = json.loads((found / "storage" / "storage_metadata.json").read_text())["len"]
        other.buffer._writer.loads(found / "writer")
        if (found / "sampler").exists():
            other.buffer._sampler.loads(found / "sampler")
        for start in range(0, n, 256):
            index = torch.arange(start, min(start + 256, n))
            chunk = other._unfold_next(stored[index], self.max_len)  # every next entry
            if self.shifted is None:
                self.shifted = self._shiftable(chunk)
            if self.shift_next:
                chunk = self._fold_next(pad(chunk, [0, 0, 0, 1]))
            self.buffer.storage.set(index, chunk)
        self.buffer._writer.load_state_dict(other.buffer._writer.state_dict())
        self.buffer._sampler.load_state_dict(other.buffer._sampler.state_dict())
        print(f"replay buffer at {found}: {n} episodes converted from layout {layout!r}")
