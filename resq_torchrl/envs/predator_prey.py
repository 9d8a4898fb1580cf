"""Predator-prey with punished lone catches: the relative-overgeneralisation "stag hunt" of the
Weighted QMIX and ResQ papers, as a batched TorchRL environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.envs import EnvBase

from resq_torchrl.envs.specs import check_actions, set_team_specs
from resq_torchrl.errors import is_whole

#: Action indices of a predator.
UP, DOWN, LEFT, RIGHT, STAY, CATCH = range(6)
N_ACTIONS = 6
#: ``(d_row, d_col)`` of the actions ``UP, DOWN, LEFT, RIGHT, STAY, CATCH`` (catch does not move).
#: The first four rows are also the neighbour order used everywhere (prey moves, catch checks).
ACTION_DELTAS: list[list[int]] = [[-1, 0], [1, 0], [0, -1], [0, 1], [0, 0], [0, 0]]


class StepDraws(NamedTuple):
    """The random draws of one step, all from the env's generator ``rng`` (``B`` envs).

    ``predator_order[b, k]`` / ``prey_order[b, k]``: index of the ``k``-th predator / prey to
    act in env ``b`` (a uniformly random permutation per env). ``prey_noise[b, p]`` ``[4]``:
    uniform ``[0, 1)`` scores of prey ``p``'s four neighbours (up, down, left, right); a prey
    that moves takes its free neighbour with the highest score, i.e. a uniform choice among
    the free ones. ``prey_moves[b, p]``: whether prey ``p`` may move this step (all True when
    ``prey_move_prob == 1``).
    """

    predator_order: torch.Tensor
    prey_order: torch.Tensor
    prey_noise: torch.Tensor
    prey_moves: torch.Tensor


class PredatorPreyEnv(EnvBase):
    """A batched grid predator-prey game where a capture needs two predators at once.

    The defaults are the ``pred_prey_punish`` config of the Weighted QMIX code base
    (``oxwhirl/wqmix``, ``src/config/envs/pred_prey_punish.yaml``) of the ``stag_hunt`` env of
    DCG (``wendelinboehmer/dcg``, ``src/envs/stag_hunt.py``), the env of the ResQ paper's
    predator-prey results: 8 predators, 8 prey (stags, no hares), a 10 x 10 grid with walls,
    catch action, 2 catchers per capture, ``+10`` per capture, ``-2`` per lone catch, captures
    freeze and remove their catchers, 5 x 5 observation windows, 200 steps. The rules below
    restate that code; they were re-implemented, vectorised over the batch, not copied.

    ``N`` predators (the agents) hunt ``M`` prey on a ``G x G`` grid. Cells are ``(row, col)``
    with ``(0, 0)`` the top-left corner; "up" is ``row - 1``, "down" ``row + 1``, "left"
    ``col - 1``, "right" ``col + 1``. Actions: 0 up, 1 down, 2 left, 3 right, 4 stay,
    5 catch. A predator is *active* until a capture *freezes* it; a frozen predator is
    removed from the grid (it blocks nothing, nobody sees it) for the rest of the episode.
    A lone catch is punished, which makes the game a relative-overgeneralisation trap for
    monotonic value factorization (QMIX, VDN) when ``miscapture_punishment < 0``.

    One step, for every env of the batch at once (loops run over agents and prey only):

    1. **Predators move**, one at a time in a uniformly random order (a fresh permutation per
       env and step). An active predator whose action is up, down, left or right enters the
       target cell unless, at that moment, the cell is outside the grid or holds an active
       predator or an alive prey; otherwise it stays. A cell left earlier in this same step
       by a predator that already moved can be entered. Frozen predators, stay and catch do
       not move (a frozen predator's action is ignored).
    2. **Prey**, one at a time in a uniformly random order (a fresh permutation per env and
       step). For each alive prey ``p`` in turn, count the active predators orthogonally
       adjacent to ``p`` whose action is catch (one frozen earlier in this same phase does not
       count; one catch counts for every prey next to it):

       * ``count >= 2``: ``p`` is captured (``+capture_reward``) and removed; every counted
         predator is frozen (removed from the grid, its cell freed at once).
       * ``count == 1``: ``+miscapture_punishment``, once for this prey (whatever the count
         of prey next to the catcher, i.e. a lone catcher next to two prey pays it twice).
       * Unless captured, ``p`` then moves (with probability ``prey_move_prob``, the
         reference's ``1 - p_stags_rest``) to a neighbour cell drawn uniformly among the free
         ones (inside the grid, holding no active predator nor alive prey at that moment);
         with no free neighbour it stays.

       E.g. two predators that both catch and both touch two prey capture exactly one of
       them (+10): the second prey then sees no active catcher (no punishment).
       Unavailable actions given anyway change nothing: a move off the grid is blocked, a
       catch with no prey next to it counts for no prey.
    3. **Time and ends**. ``t += 1``; the team reward also gets ``step_penalty`` (the
       reference's ``reward_time``, 0 by default). The episode is ``terminated`` when every
       prey is captured or every predator is frozen, and ``truncated`` (not terminated) when
       ``t == episode_limit`` and it did not terminate at that same step.

    The step's draws (:class:`StepDraws`: both orders, the prey's neighbour scores) come from
    the env's own ``torch.Generator`` ``rng`` (seeded by ``set_seed``), one
    ``torch.rand(B, N + 6 * M)`` call per step, so a batch of ``B`` envs follows the same rules
    as ``B`` single envs given the same draws. ``rand_action`` (hence ``rand_step``,
    ``rollout`` without a policy, ``check_env_specs``) samples each predator's action
    uniformly among its available ones with torch's global generator.

    Reset places the ``N + M`` predators and prey on distinct, uniformly random cells (from
    ``rng``), all active and alive, ``t = 0``. A ``"_reset"`` mask ``[B, 1]`` in the input
    resets only those envs. :meth:`set_state` places everything by hand.

    Specs (``B`` = ``batch_size``, ``K = 2 * obs_radius + 1``):
        ``("agents", "observation")`` ``[B, N, C * K * K (+ 2)]`` (``C = 2``, one more with
        each of ``hare_channel`` and ``observe_walls``; ``+ 2`` with
        ``observe_own_position``): the ``K x K`` window centred on the predator,
        channels-first ``[C, K, K]`` flattened with channels (active predators, the predator
        itself included; alive prey; with ``hare_channel`` the reference's hare channel,
        always 0 here; with ``observe_walls`` one with 1 on cells outside the grid), 0
        outside the grid; with ``observe_own_position`` followed by its own
        ``(row, col) / (G - 1)``. All zeros for a frozen predator.
        ``("agents", "action_mask")`` ``[B, N, 6]`` bool: a frozen predator may only stay; an
        active one may stay, move in every direction that stays inside the grid (occupied
        cells included: the move is then blocked), and catch only when an alive prey is
        orthogonally adjacent.
        ``"state"`` ``[B, 2 * G * G (+ G * G) (+ 1)]``: the grid channels-first ``[2, G, G]``
        (active predators, alive prey; with ``hare_channel`` a third, always 0) flattened;
        with ``state_time`` followed by ``t / episode_limit``.
        ``("agents", "action")`` ``[B, N]`` categorical over 6, ``"reward"`` ``[B, 1]`` float32,
        ``"done"``/``"terminated"``/``"truncated"`` ``[B, 1]`` bool.

    Remaining differences from the reference (with its ``pred_prey_punish`` config):
        * Action order: the reference numbers right, down, left, up, stay, catch.
        * Observation and state: the reference's always-zero hare channel is omitted by
          default (2 channels, not 3: observation ``[B, N, 50]``, state ``[B, 200]`` instead
          of 75 and 300 features; ``hare_channel=True`` restores it, and with it the
          reference's layer widths and so the scale of torch's default initialisation,
          which draws weights up to ``1/sqrt(fan_in)``), and the layout is channels-first
          where the reference flattens
          ``[rows, cols, channels]``. ``observe_walls`` marks outside cells with 1 in a
          channel of its own; the reference's ``observe_walls`` writes -1 in the predator
          channel (off in the reference config and here by default).
        * A step that both terminates and reaches ``episode_limit`` is reported here as
          ``terminated`` (not truncated); the reference flags that step as a time-limit end
          (``episode_limit`` info) like any other step at the limit.
        * Random numbers come from a torch generator, not numpy's global one: same
          distributions (orders, prey moves, reset placements), different streams.
        * Only the reference's behaviour under that config exists here: no hares, toroidal
          world, collision reward, capture without the catch action, directed observations,
          ghosts or mountain slopes.

    Args:
        grid_size: side ``G`` of the square grid, ``>= 2``.
        n_predators: number of predators ``N`` (agents), ``>= 2`` (a capture needs two).
        n_prey: number of prey ``M``, ``>= 1``; ``N + M <= G * G``.
        episode_limit: steps after which an episode is truncated, ``>= 1``.
        capture_reward: team reward per captured prey.
        miscapture_punishment: team reward per prey with exactly one active catcher next to
            it (``-2.0`` in the hard variant, ``0.0`` in the easy one).
        obs_radius: the observation window spans ``obs_radius`` cells on each side, ``>= 0``.
        step_penalty: team reward added at every step (e.g. ``-0.1``).
        prey_move_prob: probability that an alive, uncaptured prey moves at a step, in
            ``[0, 1]`` (``0``: prey never move).
        observe_own_position: append the predator's ``(row, col) / (G - 1)`` to its
            observation.
        observe_walls: add an outside-the-grid channel to the observation window.
        state_time: append ``t / episode_limit`` to the state.
        hare_channel: add the reference's hare channel (always 0: no hares in this game) to
            the observation window and the state, for its input sizes.
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
        observe_own_position: bool = False,
        observe_walls: bool = False,
        state_time: bool = False,
        hare_channel: bool = False,
        device: torch.device | str | None = "cpu",
        batch_size: Sequence[int] | torch.Size = (1,),
    ) -> None:
        batch_size = torch.Size(batch_size)
        if len(batch_size) != 1:
            raise ValueError(f"PredatorPreyEnv takes a 1-d batch_size [B], got {tuple(batch_size)}")
        sizes = {
            "grid_size": grid_size,
            "n_predators": n_predators,
            "n_prey": n_prey,
            "episode_limit": episode_limit,
            "obs_radius": obs_radius,
        }
        for key, value in sizes.items():  # 2.5 was truncated to 2 in silence
            if not is_whole(value):
                raise ValueError(f"{key} must be a whole number, got {value!r}")
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
        self.grid_size = g = int(grid_size)
        self.n_agents = self.n_predators = int(n_predators)
        self.n_prey = int(n_prey)
        self.n_actions = N_ACTIONS
        self.episode_limit = int(episode_limit)
        self.capture_reward = float(capture_reward)
        self.miscapture_punishment = float(miscapture_punishment)
        self.obs_radius = r = int(obs_radius)
        self.step_penalty = float(step_penalty)
        self.prey_move_prob = float(prey_move_prob)
        self.observe_own_position = bool(observe_own_position)
        self.observe_walls = bool(observe_walls)
        self.state_time = bool(state_time)
        self.hare_channel = bool(hare_channel)
        self.window = k = 2 * r + 1
        self.n_window_channels = 2 + int(self.hare_channel) + int(self.observe_walls)
        self.obs_dim = self.n_window_channels * k * k + (2 if self.observe_own_position else 0)
        self.state_dim = (2 + int(self.hare_channel)) * g * g + (1 if self.state_time else 0)

        b, n, m, dev = batch_size[0], self.n_predators, self.n_prey, self.device
        self.register_buffer("predator_pos", torch.zeros(b, n, 2, dtype=torch.long, device=dev))
        self.register_buffer("prey_pos", torch.zeros(b, m, 2, dtype=torch.long, device=dev))
        self.register_buffer("predator_active", torch.zeros(b, n, dtype=torch.bool, device=dev))
        self.register_buffer("prey_alive", torch.zeros(b, m, dtype=torch.bool, device=dev))
        self.register_buffer("t", torch.zeros(b, dtype=torch.long, device=dev))

        # Constant index tables. Dynamics run on the grid padded by one cell of wall, flat
        # index (row + 1) * W + col + 1 with W = G + 2; observations on the grid padded by
        # P = max(obs_radius, 1) cells, flat index (row + P) * V + col + P with V = G + 2 P.
        w = g + 2
        self._w = w
        deltas = torch.tensor(ACTION_DELTAS, device=dev)
        self.register_buffer("_flat_delta", deltas[:, 0] * w + deltas[:, 1], persistent=False)
        walls = torch.ones(w, w, dtype=torch.long, device=dev)
        walls[1:-1, 1:-1] = 0
        self.register_buffer("_walls", walls.view(-1), persistent=False)
        self._pad = p = max(r, 1)
        self._v = v = g + 2 * p
        offsets = torch.arange(k, device=dev)
        window = (offsets.view(k, 1) * v + offsets.view(1, k)).view(-1)  # from the top-left
        self.register_buffer("_window", window, persistent=False)
        self.register_buffer("_obs_nb", deltas[:4, 0] * v + deltas[:4, 1], persistent=False)
        outside = torch.ones(v, v, device=dev)
        outside[p : p + g, p : p + g] = 0
        self.register_buffer("_outside", outside.view(-1), persistent=False)
        cells = torch.arange(g * g, device=dev)
        dest = torch.stack([cells // g, cells % g], -1).unsqueeze(1) + deltas[:4]  # [G*G, 4, 2]
        self.register_buffer("_move_ok", ((dest >= 0) & (dest < g)).all(-1), persistent=False)

        self.rng = torch.Generator(device=dev)
        self.rng.seed()
        #: the draws of the latest step (for tests and debugging)
        self.last_draws: StepDraws | None = None
        #: set to a list to record each step's events: ``{"captures", "lone_catches"}``, the
        #: counts per env ``[B]`` of prey captured and of prey next to exactly one catching
        #: predator (punished); read by the greedy evaluation, not part of the tensordict
        self.event_log: list[dict[str, torch.Tensor]] | None = None
        set_team_specs(self, self.n_predators, self.n_actions, self.obs_dim, self.state_dim)

    # ------------------------------------------------------------------ observations

    def _action_mask(self, predator_cell: torch.Tensor, prey_grid: torch.Tensor) -> torch.Tensor:
        """``[B, N, 6]`` bool from the observation-padded predator cells ``[B, N]`` and prey
        channel ``[B, V * V]``."""
        b, n, g = self.batch_size[0], self.n_predators, self.grid_size
        active = self.predator_active
        mask = torch.empty(b, n, self.n_actions, dtype=torch.bool, device=self.device)
        on_grid = self.predator_pos[..., 0] * g + self.predator_pos[..., 1]
        mask[..., :STAY] = self._move_ok[on_grid] & active.unsqueeze(-1)
        mask[..., STAY] = True
        nb = (predator_cell.unsqueeze(-1) + self._obs_nb).view(b, n * 4)
        mask[..., CATCH] = (prey_grid.gather(1, nb).view(b, n, 4) > 0).any(-1) & active
        return mask

    def _observation(self) -> TensorDict:
        b, n, g = self.batch_size[0], self.n_predators, self.grid_size
        k, r, p, v = self.window, self.obs_radius, self._pad, self._v
        grid = torch.zeros(b, 2, v * v, device=self.device)
        pred_cell = (self.predator_pos[..., 0] + p) * v + self.predator_pos[..., 1] + p
        prey_cell = (self.prey_pos[..., 0] + p) * v + self.prey_pos[..., 1] + p
        grid[:, 0].scatter_add_(1, pred_cell, self.predator_active.float())
        grid[:, 1].scatter_add_(1, prey_cell, self.prey_alive.float())

        corner = pred_cell - r * (v + 1)  # top-left cell of each window
        idx = corner.unsqueeze(-1) + self._window  # [B, N, K * K]
        window = grid.gather(2, idx.view(b, 1, n * k * k).expand(b, 2, -1))
        parts = [window.view(b, 2, n, k * k).transpose(1, 2).reshape(b, n, 2 * k * k)]
        if self.hare_channel:
            parts.append(window.new_zeros(b, n, k * k))
        if self.observe_walls:
            parts.append(self._outside[idx])
        if self.observe_own_position:
            parts.append(self.predator_pos.float() / (g - 1))
        observation = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        observation = observation * self.predator_active.unsqueeze(-1)

        mask = self._action_mask(pred_cell, grid[:, 1])
        state = grid.view(b, 2, v, v)[:, :, p : p + g, p : p + g].reshape(b, 2 * g * g)
        if self.hare_channel:
            state = torch.cat([state, state.new_zeros(b, g * g)], dim=-1)
        if self.state_time:
            time = (self.t.float() / self.episode_limit).unsqueeze(-1)
            state = torch.cat([state, time], dim=-1)
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
        """``[B, 1]`` bool: every prey captured or every predator frozen."""
        no_prey = ~self.prey_alive.any(-1)
        no_predator = ~self.predator_active.any(-1)
        return (no_prey | no_predator).unsqueeze(-1)

    def _with_flags(self, out: TensorDict) -> TensorDict:
        terminated = self._terminated()
        truncated = (self.t >= self.episode_limit).unsqueeze(-1) & ~terminated
        out.update(
            {"done": terminated | truncated, "terminated": terminated, "truncated": truncated}
        )
        return out

    def rand_action(self, tensordict: TensorDictBase | None = None) -> TensorDictBase:
        """A uniformly random *available* action per predator ``[B, N]`` (under the action
        mask of the env's current state), drawn with torch's global generator; written into
        ``tensordict`` when given."""
        b, n = self.batch_size[0], self.n_predators
        p, v = self._pad, self._v
        pred_cell = (self.predator_pos[..., 0] + p) * v + self.predator_pos[..., 1] + p
        prey_cell = (self.prey_pos[..., 0] + p) * v + self.prey_pos[..., 1] + p
        prey_grid = torch.zeros(b, v * v, device=self.device)
        prey_grid.scatter_add_(1, prey_cell, self.prey_alive.float())
        mask = self._action_mask(pred_cell, prey_grid)
        action = torch.multinomial(mask.view(b * n, -1).float(), 1).view(b, n)
        if tensordict is None:
            tensordict = TensorDict(batch_size=self.batch_size, device=self.device)
        tensordict.set(("agents", "action"), action)
        return tensordict

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
        return self._with_flags(self._observation())

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
            predator_active: ``[B, N]`` bool (False: frozen), default all True.
            prey_alive: ``[B, M]`` bool (False: captured), default all True.
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
        return self._with_flags(self._observation())

    # ------------------------------------------------------------------ step

    def _draw_step_randomness(self) -> StepDraws:
        """All random draws of one step (see :class:`StepDraws`), one generator call."""
        b, n, m = self.batch_size[0], self.n_predators, self.n_prey
        u = torch.rand(b, n + 6 * m, generator=self.rng, device=self.device)
        return StepDraws(
            predator_order=u[:, :n].argsort(-1),
            prey_order=u[:, n : n + m].argsort(-1),
            prey_noise=u[:, n + m : n + 5 * m].view(b, m, 4),
            prey_moves=u[:, n + 5 * m :] < self.prey_move_prob,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        b, n, m, w = self.batch_size[0], self.n_predators, self.n_prey, self._w
        action = tensordict.get(("agents", "action"))
        check_actions(action, (b, n), self.n_actions)  # -1 moved a predator up, 6 stayed
        action = action.long()
        draws = self._draw_step_randomness()
        self.last_draws = draws
        active = self.predator_active
        alive = self.prey_alive

        # Occupancy of the wall-padded grid: walls, active predators, alive prey.
        pred_cell = (self.predator_pos[..., 0] + 1) * w + self.predator_pos[..., 1] + 1
        prey_cell = (self.prey_pos[..., 0] + 1) * w + self.prey_pos[..., 1] + 1
        occ = self._walls.expand(b, -1).clone()
        occ.scatter_add_(1, pred_cell, active.long())
        occ.scatter_add_(1, prey_cell, alive.long())

        # 1. predators move one at a time in the drawn order. A frozen predator's "move" is
        # to its own cell: if that cell is free it leaves and re-enters it (no change), else
        # it is blocked; an active one that does not move is blocked by itself.
        delta = torch.where(active & (action < STAY), self._flat_delta[action.clamp(0, 5)], 0)
        order = draws.predator_order
        cells = pred_cell.gather(1, order)
        deltas = delta.gather(1, order)
        for k in range(n):
            cell = cells[:, k : k + 1]
            step = deltas[:, k : k + 1]
            dest = cell + step
            free = occ.gather(1, dest).eq(0).long()
            occ.scatter_add_(1, cell, -free)
            occ.scatter_add_(1, dest, free)
            cells[:, k : k + 1] = cell + step * free
        pred_cell = torch.empty_like(pred_cell).scatter_(1, order, cells)

        # 2. prey one at a time in the drawn order: capture or punishment, then a move
        catching = active & (action == CATCH)
        catchers = torch.zeros_like(occ).scatter_add_(1, pred_cell, catching.long())
        order = draws.prey_order
        cells = prey_cell.gather(1, order)
        alive_sorted = alive.gather(1, order)
        noise = draws.prey_noise.gather(1, order.unsqueeze(-1).expand(b, m, 4))
        may_move = draws.prey_moves.gather(1, order) & alive_sorted
        captured = torch.zeros(b, m, dtype=torch.bool, device=self.device)
        punished = torch.zeros(b, m, dtype=torch.bool, device=self.device)
        nb_offsets = self._flat_delta[:4]
        for j in range(m):
            cell = cells[:, j : j + 1]
            nb = cell + nb_offsets  # [B, 4]
            adjacent = catchers.gather(1, nb)
            count = adjacent.sum(1, keepdim=True)
            capture = alive_sorted[:, j : j + 1] & (count >= 2)
            captured[:, j : j + 1] = capture
            punished[:, j : j + 1] = count == 1
            # the counted catchers of a capture are frozen and leave the grid, as does the prey
            freeze = adjacent * capture.long()
            catchers.scatter_add_(1, nb, -freeze)
            occ.scatter_add_(1, nb, -freeze)
            occ.scatter_add_(1, cell, -capture.long())
            # an uncaptured prey moves to its free neighbour with the highest score
            score = torch.where(occ.gather(1, nb).eq(0), noise[:, j], -1.0)
            best, direction = score.max(1, keepdim=True)
            go = (may_move[:, j : j + 1] & ~capture & (best >= 0)).long()
            dest = cell + nb_offsets[direction] * go
            occ.scatter_add_(1, cell, -go)
            occ.scatter_add_(1, dest, go)
            cells[:, j : j + 1] = dest
        punished &= alive_sorted
        prey_cell = torch.empty_like(prey_cell).scatter_(1, order, cells)
        # a catching predator is frozen iff a capture removed it from the catcher grid
        frozen = catching & catchers.gather(1, pred_cell).eq(0)

        self.predator_pos = torch.stack([pred_cell // w - 1, pred_cell % w - 1], dim=-1)
        self.prey_pos = torch.stack([prey_cell // w - 1, prey_cell % w - 1], dim=-1)
        self.predator_active = active & ~frozen
        self.prey_alive = alive & ~torch.zeros_like(captured).scatter_(1, order, captured)
        reward = (
            self.capture_reward * captured.sum(-1)
            + self.miscapture_punishment * punished.sum(-1)
            + self.step_penalty
        )

        if self.event_log is not None:
            self.event_log.append({"captures": captured.sum(-1), "lone_catches": punished.sum(-1)})

        # 3. time and ends
        self.t += 1
        out = self._with_flags(self._observation())
        out.set("reward", reward.unsqueeze(-1).float())
        return out

    def simulator_state(self) -> dict:
        """Everything the env's future depends on: every copy's positions, who is active or
        alive, step counts, and the generator's state (tensors; for checkpoints)."""
        return {"buffers": dict(self.state_dict()), "rng": self.rng.get_state()}

    def load_simulator_state(self, state: Mapping) -> None:
        """Put back a :meth:`simulator_state` (same grid, batch size and options)."""
        self.load_state_dict(state["buffers"])
        self.rng.set_state(state["rng"].cpu())

    def _set_seed(self, seed: int | None) -> None:
        """Seed the env's generator (reset placements and step draws); ``None`` draws a fresh
        seed. Random actions from ``rand_action`` use torch's global generator instead."""
        if seed is None:
            self.rng.seed()
        else:
            self.rng.manual_seed(seed)
