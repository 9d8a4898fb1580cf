"""Predator-prey with punished lone catches: the relative-overgeneralisation "stag hunt" of the
Weighted QMIX and ResQ papers, as a batched TorchRL environment."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from resq_torchrl.envs.specs import set_team_specs

#: Action indices of a predator.
UP, DOWN, LEFT, RIGHT, STAY, CATCH = range(6)
N_ACTIONS = 6
#: ``(d_row, d_col)`` of the actions ``UP, DOWN, LEFT, RIGHT, STAY, CATCH`` (catch does not move).
#: The first four rows are also the neighbour order used everywhere (catch target, prey moves).
ACTION_DELTAS: list[list[int]] = [[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0], [0, 0]]
#: Observation window channels: active predators, alive prey, cells outside the grid.
N_WINDOW_CHANNELS = 3


class PredatorPreyEnv(EnvBase):
    """A batched grid predator-prey game where a capture needs two predators at once.

    ``N`` predators (the agents) hunt ``M`` prey on a ``G x G`` grid with walls. Cells are
    ``(row, col)`` with ``(0, 0)`` the top-left corner; "up" is ``row - 1``, "down" ``row + 1``,
    "left" ``col - 1``, "right" ``col + 1``. Actions: 0 up, 1 down, 2 left, 3 right, 4 stay,
    5 catch. A lone catch is punished, which makes the game a relative-overgeneralisation
    trap for monotonic value factorization (QMIX, VDN) when ``miscapture_punishment < 0``.

    One step, in this order (all envs of the batch at once, no loop over envs):

    1. **Removed predators** ignore their action (they only ``stay``).
    2. **Catches**, on the positions at the start of the step. A predator that chooses catch
       targets the first alive prey among its neighbours in the order up, down, left, right
       (none if no prey is adjacent). A prey targeted by at least two catching predators is
       captured: ``+capture_reward`` each. Every catching predator whose target is not
       captured (a lone catch, or a catch with no adjacent prey) adds
       ``miscapture_punishment`` once. Captured prey and the predators that captured them are
       removed from the grid and free their cells at once.
    3. **Predator moves**. A predator's move is blocked (it stays) when the target cell is
       outside the grid, occupied after step 2 by an active predator or an alive prey (even
       one that moves away in this step), or targeted by a lower-index predator that also
       tries to move there (whether or not that one succeeds). Hence no two things ever share
       a cell and the outcome does not depend on any random draw.
    4. **Prey moves**, sequentially in prey index order. With probability ``prey_move_prob``
       an alive prey moves to a neighbour cell drawn uniformly among the free ones (inside the
       grid, not occupied by an active predator nor by another alive prey at its position at
       that moment: lower-index prey have already moved); with no free neighbour it stays.
       Draws come from the env's own ``torch.Generator`` (seeded by ``set_seed``).
    5. **Time and ends**. ``t += 1``; the team reward also gets ``step_penalty``. The episode
       is ``terminated`` when every prey is captured or fewer than two active predators remain
       (no capture is possible any more), and ``truncated`` (not terminated) when
       ``t == episode_limit`` and it did not terminate at that same step.

    Reset places the ``N + M`` predators and prey on distinct, uniformly random cells. A
    ``"_reset"`` mask ``[B, 1]`` in the input resets only those envs.

    Specs (``B`` = ``batch_size``, ``K = 2 * obs_radius + 1``):
        ``("agents", "observation")`` ``[B, N, 3 * K * K + 2]``: the ``K x K`` window centred on
        the predator, channels-first ``[3, K, K]`` flattened with channels (active predators,
        the predator itself included; alive prey; outside the grid), followed by its own
        ``(row, col) / (G - 1)``. All zeros for a removed predator.
        ``("agents", "action_mask")`` ``[B, N, 6]`` bool: an active predator may always move
        and stay, and catch only when a prey is adjacent; a removed predator may only stay.
        ``"state"`` ``[B, 2 * G * G + 1]``: the grid channels-first ``[2, G, G]`` (active
        predators, alive prey) flattened, followed by ``t / episode_limit``.
        ``("agents", "action")`` ``[B, N]`` categorical over 6, ``"reward"`` ``[B, 1]`` float32,
        ``"done"``/``"terminated"``/``"truncated"`` ``[B, 1]`` bool.

    Args:
        grid_size: side ``G`` of the square grid, ``>= 2``.
        n_predators: number of predators ``N`` (agents), ``>= 2`` (a capture needs two).
        n_prey: number of prey ``M``, ``>= 1``; ``N + M <= G * G``.
        episode_limit: steps after which an episode is truncated, ``>= 1``.
        capture_reward: team reward per captured prey.
        miscapture_punishment: team reward per catching predator that captures nothing
            (``-2.0`` in the hard variant, ``0.0`` in the easy one).
        obs_radius: the observation window spans ``obs_radius`` cells on each side, ``>= 0``.
        step_penalty: team reward added at every step (e.g. ``-0.1``).
        prey_move_prob: probability that an alive prey tries to move at a step, in ``[0, 1]``
            (``0`` makes the whole game deterministic given the actions).
        device: device of all tensors.
        batch_size: ``[B]``, number of parallel games.

    Example:
        >>> env = PredatorPreyEnv(grid_size=5, n_predators=2, n_prey=1, batch_size=[1])
        >>> td = env.set_state(torch.tensor([[[1, 2], [2, 1]]]), torch.tensor([[[2, 2]]]))
        >>> td["agents", "action"] = torch.tensor([[CATCH, CATCH]])
        >>> out = env.step(td)["next"]
        >>> out["reward"].item(), out["terminated"].item()
        (10.0, True)
    """

    def __init__(
        self,
        grid_size: int = 10,
        n_predators: int = 8,
        n_prey: int = 8,
        episode_limit: int = 200,
        capture_reward: float = 10.0,
        miscapture_punishment: float = -2.0,
        obs_radius: int = 2,
        step_penalty: float = 0.0,
        prey_move_prob: float = 1.0,
        device: torch.device | str | None = "cpu",
        batch_size: Sequence[int] | torch.Size = (1,),
    ) -> None:
        batch_size = torch.Size(batch_size)
        if len(batch_size) != 1:
            raise ValueError(f"PredatorPreyEnv takes a 1-d batch_size [B], got {tuple(batch_size)}")
        if grid_size < 2:
            raise ValueError(f"grid_size must be >= 2, got {grid_size}")
        if n_predators < 2:
            raise ValueError(f"n_predators must be >= 2 (a capture needs two), got {n_predators}")
        if n_prey < 1:
            raise ValueError(f"n_prey must be >= 1, got {n_prey}")
        if n_predators + n_prey > grid_size * grid_size:
            raise ValueError(
                f"n_predators + n_prey = {n_predators + n_prey} does not fit on a "
                f"{grid_size}x{grid_size} grid ({grid_size * grid_size} cells)"
            )
        if episode_limit < 1:
            raise ValueError(f"episode_limit must be >= 1, got {episode_limit}")
        if obs_radius < 0:
            raise ValueError(f"obs_radius must be >= 0, got {obs_radius}")
        if not 0.0 <= prey_move_prob <= 1.0:
            raise ValueError(f"prey_move_prob must be in [0, 1], got {prey_move_prob}")
        super().__init__(device=device, batch_size=batch_size)
        self.grid_size = int(grid_size)
        self.n_agents = self.n_predators = int(n_predators)
        self.n_prey = int(n_prey)
        self.n_actions = N_ACTIONS
        self.episode_limit = int(episode_limit)
        self.capture_reward = float(capture_reward)
        self.miscapture_punishment = float(miscapture_punishment)
        self.obs_radius = int(obs_radius)
        self.step_penalty = float(step_penalty)
        self.prey_move_prob = float(prey_move_prob)
        self.window = 2 * self.obs_radius + 1
        self.obs_dim = N_WINDOW_CHANNELS * self.window**2 + 2
        self.state_dim = 2 * self.grid_size**2 + 1

        b, n, m, dev = batch_size[0], self.n_predators, self.n_prey, self.device
        self.register_buffer("deltas", torch.tensor(ACTION_DELTAS, device=dev), persistent=False)
        self.register_buffer("predator_pos", torch.zeros(b, n, 2, dtype=torch.long, device=dev))
        self.register_buffer("prey_pos", torch.zeros(b, m, 2, dtype=torch.long, device=dev))
        self.register_buffer("predator_active", torch.zeros(b, n, dtype=torch.bool, device=dev))
        self.register_buffer("prey_alive", torch.zeros(b, m, dtype=torch.bool, device=dev))
        self.register_buffer("t", torch.zeros(b, dtype=torch.long, device=dev))
        self.rng = torch.Generator(device=dev)
        self.rng.seed()
        set_team_specs(self, self.n_predators, self.n_actions, self.obs_dim, self.state_dim)

    # ------------------------------------------------------------------ grids and observations

    def _grids(self) -> torch.Tensor:
        """Occupancy ``[B, 2, G, G]`` float: channel 0 active predators, channel 1 alive prey."""
        g = self.grid_size
        b = self.batch_size[0]
        grid = torch.zeros(b, 2, g * g, device=self.device)
        pred_idx = self.predator_pos[..., 0] * g + self.predator_pos[..., 1]
        prey_idx = self.prey_pos[..., 0] * g + self.prey_pos[..., 1]
        grid[:, 0].scatter_add_(1, pred_idx, self.predator_active.float())
        grid[:, 1].scatter_add_(1, prey_idx, self.prey_alive.float())
        return grid.view(b, 2, g, g)

    def _prey_adjacent(self, prey_grid: torch.Tensor) -> torch.Tensor:
        """Whether each of the 4 neighbours (up, down, left, right) of every predator holds an
        alive prey, ``[B, N, 4]`` bool, from the prey channel ``[B, G, G]``."""
        b = self.batch_size[0]
        padded = torch.nn.functional.pad(prey_grid, (1, 1, 1, 1))
        nb = self.predator_pos.unsqueeze(-2) + self.deltas[:4] + 1  # [B, N, 4, 2] in padded
        return padded[torch.arange(b, device=self.device).view(b, 1, 1), nb[..., 0], nb[..., 1]] > 0

    def _observation(self) -> TensorDict:
        b, n, g = self.batch_size[0], self.n_predators, self.grid_size
        k, r = self.window, self.obs_radius
        grids = self._grids()
        walls = torch.zeros(b, 1, g, g, device=self.device)
        channels = torch.cat([grids, walls], dim=1)
        padded = torch.nn.functional.pad(channels, (r, r, r, r))
        padded[:, 2] = torch.nn.functional.pad(walls[:, 0], (r, r, r, r), value=1.0)
        offsets = torch.arange(k, device=self.device)
        rows = (self.predator_pos[..., 0, None] + offsets).view(b, n, k, 1)  # window top = pos
        cols = (self.predator_pos[..., 1, None] + offsets).view(b, n, 1, k)
        batch = torch.arange(b, device=self.device).view(b, 1, 1, 1)
        window = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # [B, N, K, K, C]
        window = window.permute(0, 1, 4, 2, 3).reshape(b, n, -1)
        own = self.predator_pos.float() / (g - 1)
        active = self.predator_active.unsqueeze(-1)
        observation = torch.cat([window, own], dim=-1) * active

        mask = torch.zeros(b, n, self.n_actions, dtype=torch.bool, device=self.device)
        mask[..., :CATCH] = active
        mask[..., STAY] = True
        mask[..., CATCH] = self._prey_adjacent(grids[:, 1]).any(-1) & self.predator_active

        time = (self.t.float() / self.episode_limit).unsqueeze(-1)
        state = torch.cat([grids.reshape(b, -1), time], dim=-1)
        return TensorDict(
            {
                "agents": TensorDict(
                    {"observation": observation, "action_mask": mask}, batch_size=(b, n)
                ),
                "state": state,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _terminated(self) -> torch.Tensor:
        """``[B, 1]`` bool: every prey captured or fewer than two active predators left."""
        no_prey = ~self.prey_alive.any(-1)
        too_few = self.predator_active.sum(-1) < 2
        return (no_prey | too_few).unsqueeze(-1)

    # ------------------------------------------------------------------ reset and state

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            envs = torch.arange(self.batch_size[0], device=self.device)
        else:
            envs = reset.reshape(self.batch_size[0]).nonzero().squeeze(-1)
        if envs.numel():
            g, n, m = self.grid_size, self.n_predators, self.n_prey
            noise = torch.rand(envs.numel(), g * g, generator=self.rng, device=self.device)
            cells = noise.argsort(-1)[:, : n + m]
            pos = torch.stack([cells // g, cells % g], dim=-1)
            self.predator_pos[envs] = pos[:, :n]
            self.prey_pos[envs] = pos[:, n:]
            self.predator_active[envs] = True
            self.prey_alive[envs] = True
            self.t[envs] = 0
        out = self._observation()
        false = torch.zeros(*self.batch_size, 1, dtype=torch.bool, device=self.device)
        out.update({"done": false, "terminated": false.clone(), "truncated": false.clone()})
        return out

    def set_state(
        self,
        predator_pos: torch.Tensor,
        prey_pos: torch.Tensor,
        predator_active: torch.Tensor | None = None,
        prey_alive: torch.Tensor | None = None,
        t: torch.Tensor | int | None = None,
    ) -> TensorDict:
        """Place every predator and prey by hand (for tests and demonstrations).

        Args:
            predator_pos: ``[B, N, 2]`` integer ``(row, col)``.
            prey_pos: ``[B, M, 2]`` integer ``(row, col)``.
            predator_active: ``[B, N]`` bool, default all True.
            prey_alive: ``[B, M]`` bool, default all True.
            t: step count ``[B]`` (or an int for all), default 0.

        Returns:
            The observation TensorDict ``[B]`` (observation, action mask, state) with
            ``"done"``/``"terminated"``/``"truncated"`` of the placed state, ready for ``step``
            once ``("agents", "action")`` is set.

        Raises:
            ValueError: wrong shapes, a position outside the grid, two active predators or
                alive prey on the same cell, or ``t`` outside ``[0, episode_limit]``.
        """
        b, n, m, g, dev = (
            self.batch_size[0],
            self.n_predators,
            self.n_prey,
            self.grid_size,
            self.device,
        )
        predator_pos = torch.as_tensor(predator_pos, device=dev).long()
        prey_pos = torch.as_tensor(prey_pos, device=dev).long()
        if predator_active is None:
            predator_active = torch.ones(b, n, dtype=torch.bool, device=dev)
        if prey_alive is None:
            prey_alive = torch.ones(b, m, dtype=torch.bool, device=dev)
        predator_active = torch.as_tensor(predator_active, device=dev).bool()
        prey_alive = torch.as_tensor(prey_alive, device=dev).bool()
        t = torch.as_tensor(0 if t is None else t, device=dev).long().expand(b).clone()
        for name, value, shape in [
            ("predator_pos", predator_pos, (b, n, 2)),
            ("prey_pos", prey_pos, (b, m, 2)),
            ("predator_active", predator_active, (b, n)),
            ("prey_alive", prey_alive, (b, m)),
        ]:
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        for name, pos in [("predator_pos", predator_pos), ("prey_pos", prey_pos)]:
            if ((pos < 0) | (pos >= g)).any():
                raise ValueError(f"{name} has a cell outside the {g}x{g} grid")
        if ((t < 0) | (t > self.episode_limit)).any():
            raise ValueError(f"t must be in [0, {self.episode_limit}], got {t.tolist()}")
        cells = torch.cat([predator_pos, prey_pos], dim=1)
        present = torch.cat([predator_active, prey_alive], dim=1)
        same = (cells.unsqueeze(2) == cells.unsqueeze(1)).all(-1)
        same &= present.unsqueeze(2) & present.unsqueeze(1)
        same &= ~torch.eye(n + m, dtype=torch.bool, device=dev)
        if same.any():
            raise ValueError("two active predators or alive prey share a cell")
        self.predator_pos.copy_(predator_pos)
        self.prey_pos.copy_(prey_pos)
        self.predator_active.copy_(predator_active)
        self.prey_alive.copy_(prey_alive)
        self.t.copy_(t)
        out = self._observation()
        terminated = self._terminated()
        truncated = (self.t >= self.episode_limit).unsqueeze(-1) & ~terminated
        out.update(
            {"done": terminated | truncated, "terminated": terminated, "truncated": truncated}
        )
        return out

    # ------------------------------------------------------------------ step

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        b, n, g, dev = self.batch_size[0], self.n_predators, self.grid_size, self.device
        action = tensordict.get(("agents", "action"))
        if action.shape != (b, n):
            raise ValueError(f"expected actions of shape {(b, n)}, got {tuple(action.shape)}")
        # 1. removed predators only stay
        action = torch.where(self.predator_active, action.long(), STAY)

        # 2. catches, on the positions at the start of the step
        grids = self._grids()
        catching = action == CATCH
        adjacent = self._prey_adjacent(grids[:, 1])  # [B, N, 4]
        # prey index per cell of the grid padded by 1; dead prey write to a spare last slot
        cells = (g + 2) * (g + 2)
        prey_id = torch.full((b, cells + 1), -1, dtype=torch.long, device=dev)
        prey_cell = (self.prey_pos[..., 0] + 1) * (g + 2) + self.prey_pos[..., 1] + 1
        prey_cell = torch.where(self.prey_alive, prey_cell, cells)
        prey_id.scatter_(1, prey_cell, torch.arange(self.n_prey, device=dev).expand(b, -1))
        first = adjacent.float().argmax(-1)  # first adjacent direction (0 if none)
        nb = self.predator_pos + self.deltas[first] + 1
        target = prey_id.gather(1, nb[..., 0] * (g + 2) + nb[..., 1])
        target = torch.where(catching & adjacent.any(-1), target, self.n_prey)  # M = no target
        catchers = torch.zeros(b, self.n_prey + 1, device=dev).scatter_add_(
            1, target, catching.float()
        )
        captured = (catchers[:, : self.n_prey] >= 2) & self.prey_alive  # [B, M]
        captured_ext = torch.cat([captured, torch.zeros_like(captured[:, :1])], dim=1)
        capturing = catching & captured_ext.gather(1, target)  # [B, N]
        missed = catching & ~capturing
        reward = (
            self.capture_reward * captured.sum(-1)
            + self.miscapture_punishment * missed.sum(-1)
            + self.step_penalty
        )
        self.prey_alive &= ~captured
        self.predator_active &= ~capturing

        # 3. predator moves, against the occupancy after the catches
        occupied = (self._grids().sum(1) > 0).view(b, -1)
        moving = self.predator_active & (action < STAY)
        dest = self.predator_pos + self.deltas[action]
        inside = ((dest >= 0) & (dest < g)).all(-1)
        dest_cell = dest[..., 0].clamp(0, g - 1) * g + dest[..., 1].clamp(0, g - 1)
        free = inside & ~occupied.gather(1, dest_cell)
        candidate = moving & inside
        same_dest = dest_cell.unsqueeze(2) == dest_cell.unsqueeze(1)  # [B, i, j]
        lower = torch.ones(n, n, dtype=torch.bool, device=dev).tril(-1)  # j < i
        contested = (same_dest & lower & candidate.unsqueeze(1)).any(-1)
        moves = candidate & free & ~contested
        self.predator_pos = torch.where(moves.unsqueeze(-1), dest, self.predator_pos)

        # 4. prey moves, sequentially in prey index order
        if self.prey_move_prob > 0:
            self._move_prey()

        # 5. time and ends
        self.t += 1
        out = self._observation()
        terminated = self._terminated()
        truncated = (self.t >= self.episode_limit).unsqueeze(-1) & ~terminated
        out.update(
            {
                "reward": reward.unsqueeze(-1).float(),
                "done": terminated | truncated,
                "terminated": terminated,
                "truncated": truncated,
            }
        )
        return out

    def _move_prey(self) -> None:
        """Step 4 of the class docstring; loops over the ``M`` prey, vectorized over the batch."""
        b, m, g, dev = self.batch_size[0], self.n_prey, self.grid_size, self.device
        u = torch.rand(b, m, 4, generator=self.rng, device=dev)
        tries = torch.rand(b, m, generator=self.rng, device=dev) < self.prey_move_prob
        tries &= self.prey_alive
        # cells outside the grid or holding an active predator never change during this phase
        predators = torch.nn.functional.pad(self._grids()[:, 0], (1, 1, 1, 1), value=1.0) > 0
        batch = torch.arange(b, device=dev)
        for j in range(m):
            nb = self.prey_pos[:, j].unsqueeze(1) + self.deltas[:4]  # [B, 4, 2]
            blocked = predators[batch.view(b, 1), nb[..., 0] + 1, nb[..., 1] + 1]
            on_prey = (nb.unsqueeze(2) == self.prey_pos.unsqueeze(1)).all(-1)  # [B, 4, M]
            blocked |= (on_prey & self.prey_alive.unsqueeze(1)).any(-1)
            choice = torch.where(blocked, -1.0, u[:, j]).argmax(-1)
            go = tries[:, j] & ~blocked.all(-1)
            new = nb[batch, choice].clamp(0, g - 1)
            self.prey_pos[:, j] = torch.where(go.unsqueeze(-1), new, self.prey_pos[:, j])

    def _set_seed(self, seed: int | None) -> None:
        """Seed the env's generator (reset placements and prey moves); ``None`` draws a fresh
        seed. Random actions from ``rand_step`` use torch's global generator instead."""
        if seed is None:
            self.rng.seed()
        else:
            self.rng.manual_seed(seed)
