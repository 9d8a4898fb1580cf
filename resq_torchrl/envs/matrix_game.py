"""One-step cooperative matrix games (the paper's non-monotonic 3x3 game by default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from resq_torchrl.envs.specs import check_actions, set_team_specs

#: The paper's game: optimum (A, A) = 8, trap (C, C) = 7.9 (rows: agent 1, columns: agent 2).
PAPER_PAYOFF: list[list[float]] = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]]


def payoff_tensor(payoff: Sequence | torch.Tensor) -> torch.Tensor:
    """Validate a payoff given as a nested list (or tensor) and return it as a float64 tensor.

    The payoff of an ``n``-agent game with ``A`` actions has shape ``[A] * n`` with ``n >= 2``,
    ``A >= 2`` and finite entries.

    Raises:
        ValueError: ragged nesting, fewer than 2 agents, unequal action counts, non-finite
            entries.
    """
    if isinstance(payoff, torch.Tensor):
        table = payoff.detach().to(torch.float64).cpu()
    else:
        try:
            table = torch.tensor(_to_lists(payoff), dtype=torch.float64)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"payoff must be a rectangular nested list of numbers (one level per agent); "
                f"it is ragged or not numeric: {err}"
            ) from None
    if table.dim() < 2:
        raise ValueError(
            f"payoff must describe at least 2 agents (a nested list of depth >= 2), got shape "
            f"{tuple(table.shape)}"
        )
    if len(set(table.shape)) != 1:
        raise ValueError(
            f"every agent must have the same number of actions: payoff shape {tuple(table.shape)}"
        )
    if table.shape[0] < 2:
        raise ValueError(f"each agent needs at least 2 actions, payoff shape {tuple(table.shape)}")
    if not torch.isfinite(table).all():
        raise ValueError("payoff entries must be finite (found nan or inf)")
    return table


def _to_lists(x):
    """Nested sequences (lists, tuples, omegaconf ListConfig) -> nested Python lists."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"unexpected string {x!r}")
    if hasattr(x, "__len__") and hasattr(x, "__getitem__"):
        return [_to_lists(v) for v in x]
    return float(x)


class MatrixGameEnv(EnvBase):
    """A batched one-step cooperative matrix game as a TorchRL environment.

    ``n`` agents each pick one of ``A`` actions; the team receives ``payoff[u_1, ..., u_n]``
    and the episode terminates. There is a single state, so every observation and the global
    state are constant ones.

    Specs (``B`` = ``batch_size``):
        ``("agents", "observation")`` ``[B, n, 1]``, ``("agents", "action_mask")`` ``[B, n, A]``
        (all True), ``"state"`` ``[B, 1]``, ``("agents", "action")`` ``[B, n]`` categorical,
        ``"reward"`` ``[B, 1]``, ``"done"``/``"terminated"``/``"truncated"`` ``[B, 1]``.

    Args:
        payoff: nested list (or tensor) of shape ``[A] * n``; defaults to the paper's game.
        batch_size: number of parallel games.
        device: device of all tensors.
    """

    def __init__(
        self,
        payoff: Sequence | torch.Tensor | None = None,
        batch_size: Sequence[int] | torch.Size = (1,),
        device: torch.device | str | None = "cpu",
    ) -> None:
        batch_size = torch.Size(batch_size)
        if len(batch_size) != 1:
            raise ValueError(f"MatrixGameEnv takes a 1-d batch_size [B], got {tuple(batch_size)}")
        super().__init__(device=device, batch_size=batch_size)
        table = payoff_tensor(PAPER_PAYOFF if payoff is None else payoff)
        self.n_agents = table.dim()
        self.n_actions = table.shape[0]
        self.register_buffer("payoff", table.to(device=self.device, dtype=torch.float32))
        set_team_specs(self, self.n_agents, self.n_actions, obs_dim=1, state_dim=1)

    def _observation(self) -> TensorDict:
        b, n, a, dev = self.batch_size, self.n_agents, self.n_actions, self.device
        return TensorDict(
            {
                "agents": TensorDict(
                    {
                        "observation": torch.ones(*b, n, 1, device=dev),
                        "action_mask": torch.ones(*b, n, a, dtype=torch.bool, device=dev),
                    },
                    batch_size=(*b, n),
                ),
                "state": torch.ones(*b, 1, device=dev),
            },
            batch_size=b,
            device=dev,
        )

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        out = self._observation()
        false = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update({"done": false, "terminated": false.clone(), "truncated": false.clone()})
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(("agents", "action"))
        check_actions(action, (*self.batch_size, self.n_agents), self.n_actions)
        reward = self.payoff[tuple(action.long().unbind(-1))].unsqueeze(-1)
        out = self._observation()
        true = torch.ones(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update(
            {
                "reward": reward,
                "done": true,
                "terminated": true.clone(),
                "truncated": torch.zeros_like(true),
            }
        )
        return out

    def rand_transition(self, action: torch.Tensor | None = None) -> TensorDictBase:
        """``rand_step(reset())`` without the env's reset/step machinery: the same
        tensordict (same keys, same values) from the same draw of torch's generator
        (``torch.randint`` of the actions, as the action spec's ``rand`` does), in about a
        quarter of the time; what the matrix-game trainer calls once per update.

        The parts that never change (observations, masks, done flags) are built once and
        cloned on every call, so a caller writing into the result changes nothing later.
        ``action`` (``[B, n_agents]`` integers in ``[0, A)``): the step from these actions
        instead of a draw."""
        template = self.__dict__.get("_transition")
        if template is None or template.device != self.device:  # built once per device
            # a fixed action, not rand_step: building the template draws nothing
            first = self.reset()
            first.set(("agents", "action"), self.full_action_spec["agents", "action"].zero())
            self.__dict__["_transition"] = self.step(first).exclude(
                ("agents", "action"), ("next", "reward")
            )
        out = self._transition.clone()
        if action is None:
            action = torch.randint(
                0, self.n_actions, (*self.batch_size, self.n_agents), device=self.device
            )
        else:
            check_actions(action, (*self.batch_size, self.n_agents), self.n_actions)
        out.set(("agents", "action"), action)
        out.set(("next", "reward"), self.payoff[tuple(action.unbind(-1))].unsqueeze(-1))
        return out

    def simulator_state(self) -> dict:
        """Nothing: the game is one deterministic step (for checkpoints, which restore the
        collector's in-flight data only for envs that define this)."""
        return {}

    def load_simulator_state(self, state) -> None:
        """Nothing to restore (see :meth:`simulator_state`)."""

    def _set_seed(self, seed: int | None) -> None:
        """The game itself is deterministic; ``rand_step`` draws actions from the action spec
        with torch's global generator, so ``torch.manual_seed`` fixes a run."""

    def joint_actions(self) -> torch.Tensor:
        """Every joint action, ``[A ** n, n]`` int64, in row-major order of ``payoff``."""
        grids = torch.meshgrid(
            *[torch.arange(self.n_actions, device=self.device)] * self.n_agents, indexing="ij"
        )
        return torch.stack([g.reshape(-1) for g in grids], dim=-1)
