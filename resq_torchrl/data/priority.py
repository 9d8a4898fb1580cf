"""Proportional prioritized sampling over a priority tensor.

torchrl's ``PrioritizedSampler`` keeps its priorities in a compiled segment tree
(``torchrl._torchrl``); with the torch build this project pins, that extension fails to load
(``SumSegmentTreeFp32 is not available``), so the sampler cannot be built at all. Episode
buffers hold a few thousand items, for which one ``torch.multinomial`` over a priority
tensor is as fast as a tree, so this module writes that sampler on torchrl's ``Sampler``
interface (same rule: Schaul et al. 2016, proportional variant). Its weights come under
``"_weight"``, the key the losses read (torchrl 0.14's ``PrioritizedSampler`` names them
``"priority_weight"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage

__all__ = ["TensorPrioritizedSampler"]


class TensorPrioritizedSampler(Sampler):
    """Samples item ``i`` with probability ``P(i) = p_i^alpha / sum_k p_k^alpha`` (with
    replacement) and returns importance weights ``w_i = (N P(i))^-beta / max_j w_j`` over the
    stored items as ``"_weight"``.

    New items get the largest priority given so far (1.0 at first), so every episode is
    replayed at least once with a high chance. ``update_priority(index, priority)`` sets
    ``p_i = |priority| + eps``.

    Args:
        max_capacity: number of items of the storage.
        alpha: prioritization exponent (0: uniform).
        beta: importance-correction exponent (1: full correction).
        eps: added to every priority so that no item becomes unreachable.
    """

    def __init__(
        self, max_capacity: int, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6
    ) -> None:
        if max_capacity < 1:
            raise ValueError(f"max_capacity must be >= 1, got {max_capacity}")
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}")
        self.max_capacity, self.alpha, self.beta, self.eps = max_capacity, alpha, beta, eps
        self._priority = torch.zeros(max_capacity)
        self._max_priority = 1.0

    def _mark_new(self, index) -> None:
        index = torch.as_tensor(index).reshape(-1).long()
        self._priority[index] = self._max_priority

    def add(self, index: int) -> None:
        self._mark_new(index)

    def extend(self, index: torch.Tensor) -> None:
        self._mark_new(index)

    def mark_update(self, index, *, storage: Storage | None = None) -> None:
        self._mark_new(index)

    def update_priority(self, index, priority, *, storage: Storage | None = None) -> None:
        index = torch.as_tensor(index).reshape(-1).long().cpu()
        priority = torch.as_tensor(priority, dtype=torch.float32).reshape(-1).detach().cpu()
        if priority.numel() == 1:
            priority = priority.expand(index.numel())
        if priority.numel() != index.numel():
            raise ValueError(
                f"got {priority.numel()} priorities for {index.numel()} indices: give one per "
                "sampled item"
            )
        priority = priority.abs() + self.eps
        self._priority[index] = priority
        self._max_priority = max(self._max_priority, float(priority.max()))

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        n = len(storage)
        if n == 0:
            raise RuntimeError("cannot sample from an empty storage")
        scaled = self._priority[:n].pow(self.alpha)
        probs = scaled / scaled.sum()
        index = torch.multinomial(probs, batch_size, replacement=True, generator=self._rng)
        weight = (n * probs[index]).pow(-self.beta)
        weight = weight / (n * probs.min()).pow(-self.beta)  # the largest possible weight
        device = getattr(storage, "device", None)
        if isinstance(device, torch.device) or isinstance(device, str) and device != "auto":
            index, weight = index.to(device), weight.to(device)
        return index, {"_weight": weight}

    def _empty(self) -> None:
        self._priority.zero_()
        self._max_priority = 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"priority": self._priority.clone(), "max_priority": self._max_priority}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._priority.copy_(state_dict["priority"])
        self._max_priority = float(state_dict["max_priority"])

    def dumps(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self._priority, path / "priority.pt")
        (path / "sampler.json").write_text(json.dumps({"max_priority": self._max_priority}))

    def loads(self, path) -> None:
        path = Path(path)
        self._priority.copy_(torch.load(path / "priority.pt", weights_only=True))
        self._max_priority = float(json.loads((path / "sampler.json").read_text())["max_priority"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_capacity={self.max_capacity}, alpha={self.alpha}, "
            f"beta={self.beta})"
        )
