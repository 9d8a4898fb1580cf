"""PredatorPreyEnv: the rules of DCG's stag_hunt with Weighted QMIX's pred_prey_punish config,
pinned one by one on hand-built grids, and the batched env checked against a literal,
one-env, pure-python restatement of the rules given the same random draws."""

import doctest

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from resq_torchrl.envs import PredatorPreyEnv
from resq_torchrl.envs import predator_prey as pp
from resq_torchrl.envs.predator_prey import CATCH, DOWN, LEFT, RIGHT, STAY, UP

MOVES = {UP: (-1, 0), DOWN: (1, 0), LEFT: (0, -1), RIGHT: (0, 1)}
OPTIONS = {"observe_own_position": True, "observe_walls": True, "state_time": True}


def small_env(n_predators=2, n_prey=1, batch=1, **kwargs):
    """A 5x5 grid (prey keep moving unless prey_move_prob=0 is asked)."""
    env = PredatorPreyEnv(
        grid_size=5, n_predators=n_predators, n_prey=n_prey, batch_size=[batch], **kwargs
    )
    env.set_seed(0)
    return env


def place(env, predators, prey, **kwargs):
    """``set_state`` with the same layout (plain lists of ``(row, col)``) in every env."""
    b = env.batch_size[0]
    pred = torch.tensor(predators).expand(b, -1, -1)
    prey = torch.tensor(prey).expand(b, -1, -1)
    for key in ("predator_active", "prey_alive"):
        if key in kwargs:
            kwargs[key] = torch.tensor(kwargs[key]).expand(b, -1)
    return env.set_state(pred, prey, **kwargs)


def step(env, td, actions):
    """Step with the same actions (a list, one per predator) in every env."""
    td["agents", "action"] = torch.tensor(actions).expand(env.batch_size[0], -1).clone()
    return env.step(td)["next"]


def positions(tensor):
    """``[B, K, 2]`` -> list (per env) of lists of ``(row, col)`` tuples."""
    return [[tuple(cell) for cell in env] for env in tensor.tolist()]


# ---------------------------------------------------------------- a literal reference


def snapshot(env, b):
    """Env ``b``'s state as plain python lists."""
    return {
        "pred": [tuple(c) for c in env.predator_pos[b].tolist()],
        "active": env.predator_active[b].tolist(),
        "prey": [tuple(c) for c in env.prey_pos[b].tolist()],
        "alive": env.prey_alive[b].tolist(),
        "t": env.t[b].item(),
    }


def draws_of(env, b):
    d = env.last_draws
    return (
        d.predator_order[b].tolist(),
        d.prey_order[b].tolist(),
        d.prey_noise[b].tolist(),
        d.prey_moves[b].tolist(),
    )


def reference_step(env, s, actions, draws):
    """One step of one env, the rules of the class docstring written out literally.
    ``s`` (a snapshot) is updated in place; returns ``(reward, terminated, truncated,
    captures, lone_catches)``."""
    g = env.grid_size
    predator_order, prey_order, noise, prey_moves = draws

    def inside(c):
        return 0 <= c[0] < g and 0 <= c[1] < g

    def occupied(c):
        return any(a and p == c for a, p in zip(s["active"], s["pred"], strict=True)) or any(
            a and p == c for a, p in zip(s["alive"], s["prey"], strict=True)
        )

    def shift(c, d):
        return (c[0] + d[0], c[1] + d[1])

    for i in predator_order:  # 1. predators, one at a time
        if s["active"][i] and actions[i] in MOVES:
            dest = shift(s["pred"][i], MOVES[actions[i]])
            if inside(dest) and not occupied(dest):
                s["pred"][i] = dest
    reward, captures, lone_catches = env.step_penalty, 0, 0
    for p in prey_order:  # 2. prey, one at a time
        if not s["alive"][p]:
            continue
        counted = [
            i
            for i in range(env.n_predators)
            if s["active"][i]
            and actions[i] == CATCH
            and abs(s["pred"][i][0] - s["prey"][p][0]) + abs(s["pred"][i][1] - s["prey"][p][1]) == 1
        ]
        if len(counted) >= 2:
            reward += env.capture_reward
            captures += 1
            s["alive"][p] = False
            for i in counted:
                s["active"][i] = False
            continue
        if len(counted) == 1:
            reward += env.miscapture_punishment
            lone_catches += 1
        free = [
            d
            for d in range(4)
            if inside(shift(s["prey"][p], MOVES[d])) and not occupied(shift(s["prey"][p], MOVES[d]))
        ]
        if prey_moves[p] and free:
            best = max(free, key=lambda d: noise[p][d])
            s["prey"][p] = shift(s["prey"][p], MOVES[best])
    s["t"] += 1
    terminated = not any(s["alive"]) or not any(s["active"])
    truncated = s["t"] >= env.episode_limit and not terminated
    return reward, terminated, truncated, captures, lone_catches


def reference_observation(env, s):
    """Observation ``[N][obs_dim]``, mask ``[N][6]`` and state of one env, literally."""
    g, r = env.grid_size, env.obs_radius
    pred_cells = {p for a, p in zip(s["active"], s["pred"], strict=True) if a}
    prey_cells = {p for a, p in zip(s["alive"], s["prey"], strict=True) if a}
    observations, masks = [], []
    for i, (row, col) in enumerate(s["pred"]):
        window = [(row + dr, col + dc) for dr in range(-r, r + 1) for dc in range(-r, r + 1)]
        obs = [float(c in pred_cells) for c in window] + [float(c in prey_cells) for c in window]
        if env.observe_walls:
            obs += [float(not (0 <= c[0] < g and 0 <= c[1] < g)) for c in window]
        if env.observe_own_position:
            obs += [row / (g - 1), col / (g - 1)]
        active = s["active"][i]
        observations.append([x if active else 0.0 for x in obs])
        mask = [active and 0 <= row + d[0] < g and 0 <= col + d[1] < g for d in MOVES.values()]
        adjacent = any((row + d[0], col + d[1]) in prey_cells for d in MOVES.values())
        masks.append(mask + [True, active and adjacent])
    cells = [(row, col) for row in range(g) for col in range(g)]
    state = [float(c in pred_cells) for c in cells] + [float(c in prey_cells) for c in cells]
    if env.state_time:
        state.append(s["t"] / env.episode_limit)
    return observations, masks, state


def assert_observation_matches(env, td, b, s):
    """``td``'s observation, mask and state of env ``b`` are those of the snapshot ``s``."""
    obs, mask, state = reference_observation(env, s)
    torch.testing.assert_close(
        td["agents", "observation"][b], torch.tensor(obs).view(-1, len(obs[0]))
    )
    assert td["agents", "action_mask"][b].tolist() == mask, b
    torch.testing.assert_close(td["state"][b], torch.tensor(state))


def biased_actions(mask, generator):
    """Masked random actions, catch 6 times as likely as any other allowed action."""
    b, n, a = mask.shape
    weights = mask.float() * torch.tensor([1.0, 1, 1, 1, 1, 6])
    return torch.multinomial(weights.view(-1, a), 1, generator=generator).view(b, n)


# ---------------------------------------------------------------- specs, defaults, layout


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": [3]},
        {"grid_size": 5, "n_predators": 2, "n_prey": 1, "batch_size": [2]},
        {"batch_size": [2], "obs_radius": 0, **OPTIONS},
        {"batch_size": [2], "observe_walls": True},
    ],
)
def test_check_env_specs(kwargs):
    """Proves the specs match what reset and step produce, default and option configs."""
    check_env_specs(PredatorPreyEnv(**kwargs))


def test_defaults_and_yaml_are_the_reference_config():
    """Proves the constructor's defaults and configs/env/predator_prey.yaml both give the
    pred_prey_punish env (8 predators, 8 prey, 10x10, 200 steps, +10 / -2, 5x5 windows, no
    extras), and that the training builder accepts every yaml key."""
    from conftest import compose_config

    from resq_torchrl.training.builders import make_env

    attrs = [
        "grid_size",
        "n_predators",
        "n_prey",
        "episode_limit",
        "capture_reward",
        "miscapture_punishment",
        "obs_radius",
        "step_penalty",
        "prey_move_prob",
        "observe_own_position",
        "observe_walls",
        "state_time",
        "hare_channel",
    ]
    env = PredatorPreyEnv()
    expected = [10, 8, 8, 200, 10.0, -2.0, 2, 0.0, 1.0, False, False, False, False]
    assert [getattr(env, a) for a in attrs] == expected
    assert (env.obs_dim, env.state_dim) == (2 * 25, 2 * 100)
    cfg = compose_config("train", "env=predator_prey")["env"]
    built = make_env(cfg, 2).base_env
    assert [getattr(built, a) for a in attrs] == expected


@pytest.mark.parametrize(
    "options, obs_dim, state_dim",
    [
        ({}, 2 * 25, 2 * 100),
        ({"observe_own_position": True}, 2 * 25 + 2, 2 * 100),
        ({"observe_walls": True}, 3 * 25, 2 * 100),
        ({"state_time": True}, 2 * 25, 2 * 100 + 1),
        ({"hare_channel": True}, 3 * 25, 3 * 100),  # the reference's 75 / 300
        ({"hare_channel": True, "observe_walls": True}, 4 * 25, 3 * 100),
        ({**OPTIONS, "obs_radius": 1}, 3 * 9 + 2, 2 * 100 + 1),
    ],
)
def test_options_change_the_dims(options, obs_dim, state_dim):
    """Proves each option adds its features to the specs and to what reset returns."""
    env = PredatorPreyEnv(batch_size=[2], **options)
    td = env.reset()
    assert (env.obs_dim, env.state_dim) == (obs_dim, state_dim)
    assert td["agents", "observation"].shape == (2, 8, obs_dim)
    assert td["state"].shape == (2, state_dim)
    assert env.observation_spec["agents", "observation"].shape == (2, 8, obs_dim)
    assert env.observation_spec["state"].shape == (2, state_dim)


def test_reset_places_everything_on_distinct_random_cells():
    """Proves a reset puts the N + M predators and prey on distinct cells of the grid, all
    active and alive, t = 0, and that placements vary (uniform draws) between envs."""
    env = PredatorPreyEnv(batch_size=[64])
    env.set_seed(0)
    td = env.reset()
    cells = torch.cat([env.predator_pos, env.prey_pos], dim=1)
    flat = cells[..., 0] * 10 + cells[..., 1]
    assert all(len(set(row)) == 16 for row in flat.tolist())
    assert ((cells >= 0) & (cells < 10)).all()
    assert env.predator_active.all() and env.prey_alive.all() and (env.t == 0).all()
    assert len({tuple(row) for row in flat.tolist()}) == 64
    assert torch.bincount(flat.view(-1), minlength=100).min() > 0  # every cell gets used
    grid = td["state"].view(64, 2, 10, 10)
    assert (grid[:, 0].sum((1, 2)) == 8).all() and (grid[:, 1].sum((1, 2)) == 8).all()
    assert not td["done"].any()


def test_observation_window_channels_zero_outside_and_own_position():
    """Proves the window layout [C, K, K] (active predators incl. itself, alive prey, with
    observe_walls the outside channel), 0 outside the grid, the (row, col) / (G - 1) tail,
    and the state layout [2, G, G] (+ t / limit with state_time)."""
    env = small_env(n_predators=3, n_prey=2, obs_radius=1)
    td = place(env, [[0, 0], [1, 1], [4, 4]], [[0, 1], [3, 3]], prey_alive=[True, False])
    obs = td["agents", "observation"][0, 0]
    assert obs.shape == (18,)
    window = obs.view(2, 3, 3)
    assert window[0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]  # itself and predator 1
    assert window[1].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]  # prey to its right
    window = td["agents", "observation"][0, 2].view(2, 3, 3)  # bottom-right corner
    assert window[0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert window[1].tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]  # the (3, 3) prey is dead
    state = td["state"][0].view(2, 5, 5)
    assert state[0].nonzero().tolist() == [[0, 0], [1, 1], [4, 4]]
    assert state[1].nonzero().tolist() == [[0, 1]]

    env = small_env(n_predators=3, n_prey=2, obs_radius=1, **OPTIONS)
    td = place(env, [[0, 0], [1, 1], [4, 4]], [[0, 1], [3, 3]], prey_alive=[True, False], t=3)
    obs = td["agents", "observation"][0, 0]
    assert obs.shape == (29,)
    window = obs[:27].view(3, 3, 3)
    assert window[0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert window[1].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert window[2].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]  # top and left outside
    assert obs[27:].tolist() == [0.0, 0.0]
    assert td["agents", "observation"][0, 1, 27:].tolist() == [0.25, 0.25]
    assert td["agents", "observation"][0, 1, 18:27].sum() == 0  # (1, 1) sees no outside
    assert td["state"][0, -1].item() == pytest.approx(3 / 200)


def test_default_window_is_five_by_five_centred():
    """Proves the default obs_radius 2 window: a predator at (2, 2) of a 5x5 grid sees the
    whole grid, at (0, 0) only the bottom-right 3x3 of its window."""
    env = small_env()
    td = place(env, [[2, 2], [0, 0]], [[4, 3]])
    centred = td["agents", "observation"][0, 0].view(2, 5, 5)
    assert torch.equal(centred, td["state"][0].view(2, 5, 5))
    corner = td["agents", "observation"][0, 1].view(2, 5, 5)
    assert corner[0].nonzero().tolist() == [[2, 2], [4, 4]]  # itself, the other predator
    assert corner[1].sum() == 0  # (4, 3) is 4 rows away
    assert corner[:, :2].sum() == 0 and corner[:, :, :2].sum() == 0


# ---------------------------------------------------------------- masks


def test_masks_moves_inside_grid_stay_always_catch_only_next_to_alive_prey():
    """Proves the action mask: moves that stay inside the grid (occupied cells included),
    stay always, catch only with an alive prey orthogonally adjacent (not diagonal, not a
    captured one), and only stay for a frozen predator."""
    env = small_env(n_predators=5, n_prey=2)
    td = place(
        env,
        [[0, 0], [1, 1], [4, 4], [2, 3], [3, 0]],
        [[0, 1], [4, 3]],
        predator_active=[True, True, True, True, False],
        prey_alive=[True, False],
    )
    mask = td["agents", "action_mask"][0].tolist()
    t, f = True, False
    assert mask[0] == [f, t, f, t, t, t]  # corner; prey (0, 1) to its right
    assert mask[1] == [t, t, t, t, t, t]  # (0, 1) above: catch; moves into cells allowed
    assert mask[2] == [t, f, t, f, t, f]  # (4, 3) holds a captured prey only
    assert mask[3] == [t, t, t, t, t, f]  # no prey around
    assert mask[4] == [f, f, f, f, t, f]  # frozen


def test_off_grid_moves_given_anyway_leave_the_predator_in_place():
    """Proves a masked-out move into the outside, if given anyway, is blocked."""
    env = small_env(prey_move_prob=0.0)
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    step(env, td, [UP, RIGHT])
    assert positions(env.predator_pos) == [[(0, 0), (4, 4)]]
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    step(env, td, [LEFT, DOWN])
    assert positions(env.predator_pos) == [[(0, 0), (4, 4)]]


def test_rand_action_only_picks_available_actions():
    """Proves rand_action (hence rand_step and rollouts without a policy) samples only
    actions of the current mask, every available action, frozen predators only stay."""
    torch.manual_seed(0)
    env = PredatorPreyEnv(batch_size=[16], episode_limit=30)
    env.set_seed(0)
    td = env.reset()
    counts = torch.zeros(6)
    for _ in range(150):
        td = env.rand_action(td)
        action = td["agents", "action"]
        assert td["agents", "action_mask"].gather(-1, action.unsqueeze(-1)).all()
        counts += torch.bincount(action.view(-1), minlength=6)
        _, td = env.step_and_maybe_reset(td)
    assert (counts > 0).all()  # catches included
    rollout = env.rollout(60, break_when_any_done=False)
    taken = rollout["agents", "action_mask"].gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all() and (~rollout["agents", "action_mask"]).any()
    assert not rollout["next", "agents", "action_mask"][..., :4].all()
    out = env.rand_step(env.reset())
    assert out["agents", "action_mask"].gather(-1, out["agents", "action"].unsqueeze(-1)).all()
    assert env.rand_action()["agents", "action"].shape == (16, 8)


# ---------------------------------------------------------------- catches


def test_two_catchers_next_to_two_prey_capture_exactly_one():
    """Proves prey resolve one at a time: two predators that catch and both touch two prey
    capture the first prey of the drawn order (+10), are frozen (removed from the grid, zero
    observation, only stay); the second prey then has no active catcher (no punishment) and
    moves. Both prey get captured in some of the 64 copies."""
    env = small_env(n_predators=3, n_prey=2, batch=64)
    # predators 0 (1, 1) and 1 (2, 2) both touch prey 0 (1, 2) and prey 1 (2, 1)
    td = place(env, [[1, 1], [2, 2], [4, 4]], [[1, 2], [2, 1]])
    assert td["agents", "action_mask"][:, :2, CATCH].all()
    out = step(env, td, [CATCH, CATCH, STAY])
    first = env.last_draws.prey_order[:, 0]
    assert (out["reward"] == 10.0).all()
    assert torch.equal(env.prey_alive, torch.stack([first == 1, first == 0], dim=-1))
    assert set(first.tolist()) == {0, 1}
    assert env.predator_active.tolist() == [[False, False, True]] * 64
    assert out["agents", "action_mask"][:, :2].tolist() == [[[False] * 4 + [True, False]] * 2] * 64
    assert (out["agents", "observation"][:, :2] == 0).all()
    assert out["agents", "observation"][:, 2].abs().sum(-1).gt(0).all()
    grid = out["state"].view(64, 2, 5, 5)
    assert grid[:, 0].nonzero()[:, 1:].tolist() == [[4, 4]] * 64  # only predator 2 is left
    assert (grid[:, 1].sum((1, 2)) == 1).all()
    survivors = [
        cells[1 - f] for cells, f in zip(positions(env.prey_pos), first.tolist(), strict=True)
    ]
    assert not {(1, 2), (2, 1)} & set(survivors)  # the uncaptured prey moved away
    assert not out["done"].any()  # a prey and an active predator are left


def neighbours(cell):
    """The 4 orthogonal neighbours of ``(row, col)`` (off-grid ones included)."""
    return {(cell[0] + d[0], cell[1] + d[1]) for d in MOVES.values()}


def test_cells_freed_by_a_capture_can_be_entered_by_later_prey_of_the_same_step():
    """Proves a capture frees cells at once, within the prey phase: (a) the two frozen
    catchers' cells can be entered by the surviving prey resolved after the capture, so it
    reaches each of its 4 neighbours, both catcher cells included; (b) the captured prey's
    cell can be entered by a prey resolved after it, and never by one resolved before it
    (the cell still holds an alive prey then). 400 seeded copies of each layout."""
    b = 400
    # (a) catchers 0 (1, 1) and 1 (2, 2) touch prey 0 (1, 2) and prey 1 (2, 1): the first
    # prey of the order is captured, the other one then has 4 free neighbours
    env = small_env(n_predators=3, n_prey=2, batch=b)
    td = place(env, [[1, 1], [2, 2], [4, 4]], [[1, 2], [2, 1]])
    step(env, td, [CATCH, CATCH, STAY])
    first = env.last_draws.prey_order[:, 0].tolist()
    start = [(1, 2), (2, 1)]
    counts = {}
    for cells, alive, f in zip(
        positions(env.prey_pos), env.prey_alive.tolist(), first, strict=True
    ):
        assert alive == [f == 1, f == 0]
        cell = cells[1 - f]
        assert cell in neighbours(start[1 - f]), cell  # moved, into a free cell
        counts[cell] = counts.get(cell, 0) + 1
    assert counts.get((1, 1), 0) > 0 and counts.get((2, 2), 0) > 0, counts  # catcher cells
    assert set(counts) == neighbours((1, 2)) | neighbours((2, 1)), counts

    # (b) catchers 0 (1, 2) and 1 (2, 1) touch only prey 0 (2, 2); prey 1 (2, 3) has no
    # catcher next to it and may step onto (2, 2) once prey 0 is captured
    env = small_env(n_predators=3, n_prey=2, batch=b)
    td = place(env, [[1, 2], [2, 1], [0, 0]], [[2, 2], [2, 3]])
    out = step(env, td, [CATCH, CATCH, STAY])
    assert (out["reward"] == 10.0).all()
    assert env.prey_alive.tolist() == [[False, True]] * b
    captured_first = (env.last_draws.prey_order[:, 0] == 0).tolist()
    after, before = {}, {}
    for cells, cap_first in zip(positions(env.prey_pos), captured_first, strict=True):
        counts = after if cap_first else before
        counts[cells[1]] = counts.get(cells[1], 0) + 1
    assert set(after) == neighbours((2, 3)), after  # (2, 2) included
    assert after[(2, 2)] > 0
    assert set(before) == neighbours((2, 3)) - {(2, 2)}, before  # (2, 2) held prey 0 then


@pytest.mark.parametrize("punishment", [-2.0, 0.0])
def test_lone_catch_next_to_two_prey_is_punished_per_prey(punishment):
    """Proves the punishment is paid once per prey with a single active catcher: a lone
    catcher touching two prey pays it twice, and nothing is captured or frozen."""
    env = small_env(n_predators=2, n_prey=2, batch=8, miscapture_punishment=punishment)
    td = place(env, [[1, 1], [4, 4]], [[1, 2], [2, 1]])
    out = step(env, td, [CATCH, STAY])
    assert (out["reward"] == 2 * punishment).all()
    assert env.prey_alive.all() and env.predator_active.all()
    assert not out["done"].any()


def test_lone_catch_next_to_one_prey_is_punished_and_the_prey_moves_away():
    """Proves a lone catch pays -2 once, and the uncaptured prey then moves to one of its
    free neighbours, each of them in some of the 300 copies."""
    env = small_env(batch=300)
    td = place(env, [[1, 2], [4, 4]], [[2, 2]])
    out = step(env, td, [CATCH, STAY])
    assert (out["reward"] == -2.0).all()
    assert env.prey_alive.all() and env.predator_active.all()
    assert positions(env.predator_pos) == [[(1, 2), (4, 4)]] * 300
    assert {p[0] for p in positions(env.prey_pos)} == {(3, 2), (2, 1), (2, 3)}


def test_event_log_counts_captures_and_lone_catches_per_env():
    """The evaluation's event log: off by default; on, one entry per step with the counts
    per env of prey captured and of prey next to exactly one catcher (the two catchers'
    grid above: one capture; the lone catcher's: two punished prey)."""
    env = small_env(n_predators=3, n_prey=2, batch=4)
    td = place(env, [[1, 1], [2, 2], [4, 4]], [[1, 2], [2, 1]])
    step(env, td, [CATCH, CATCH, STAY])
    assert env.event_log is None  # nothing recorded unless asked
    env.event_log = []
    td = place(env, [[1, 1], [2, 2], [4, 4]], [[1, 2], [2, 1]])
    step(env, td, [CATCH, CATCH, STAY])
    td = place(env, [[1, 1], [4, 4], [4, 0]], [[1, 2], [2, 1]])
    step(env, td, [CATCH, STAY, STAY])
    assert [e["captures"].tolist() for e in env.event_log] == [[1] * 4, [0] * 4]
    assert [e["lone_catches"].tolist() for e in env.event_log] == [[0] * 4, [2] * 4]


def test_event_counts_explain_every_reward_of_random_play():
    """Property: reward = 10 captures - 2 lone catches at every step of random masked play
    on the full game (64 envs, 60 steps, auto-reset)."""
    env = PredatorPreyEnv(batch_size=[64])
    env.set_seed(5)
    env.event_log = []
    rollout = env.rollout(60, break_when_any_done=False)
    captures = torch.stack([e["captures"] for e in env.event_log], -1)
    lone = torch.stack([e["lone_catches"] for e in env.event_log], -1)
    reward = rollout["next", "reward"].squeeze(-1)
    assert captures.sum() > 0 and lone.sum() > 0
    torch.testing.assert_close(reward, (10.0 * captures - 2.0 * lone).float())


def test_two_lone_catches_on_different_prey_are_each_punished():
    env = small_env(n_prey=2, prey_move_prob=0.0)
    td = place(env, [[0, 0], [4, 4]], [[0, 1], [4, 3]])
    out = step(env, td, [CATCH, CATCH])
    assert out["reward"].item() == -4.0
    assert env.prey_alive.all()


def test_capture_needs_two_active_catchers():
    """Proves a frozen predator's catch and an adjacent predator that does not catch are not
    counted: one active catcher is a lone catch (-2); two active catchers capture."""
    env = small_env(n_predators=4, n_prey=1, batch=4)
    layout = [[1, 2], [2, 1], [2, 3], [0, 0]], [[2, 2]]
    td = place(env, *layout, predator_active=[True, False, True, True])
    out = step(env, td, [CATCH, CATCH, STAY, STAY])
    assert (out["reward"] == -2.0).all() and env.prey_alive.all()
    td = place(env, *layout)
    out = step(env, td, [CATCH, STAY, CATCH, STAY])
    assert (out["reward"] == 10.0).all() and not env.prey_alive.any()
    assert env.predator_active.tolist() == [[False, True, False, True]] * 4


def test_three_catchers_capture_and_all_three_freeze():
    env = small_env(n_predators=4, n_prey=2)
    td = place(env, [[1, 2], [2, 1], [2, 3], [0, 0]], [[2, 2], [4, 4]])
    out = step(env, td, [CATCH, CATCH, CATCH, STAY])
    assert out["reward"].item() == 10.0
    assert env.predator_active.tolist() == [[False, False, False, True]]


def test_catches_are_judged_after_the_predators_moved():
    """Proves prey resolve after every predator moved: a partner that steps away from the
    prey leaves a lone catch (-2), and a predator that steps next to the prey in the same
    step does not catch (its action is a move)."""
    env = small_env(n_predators=3, n_prey=1, prey_move_prob=0.0)
    td = place(env, [[1, 2], [2, 1], [3, 3]], [[2, 2]])
    out = step(env, td, [CATCH, LEFT, LEFT])  # predator 2 arrives at (3, 2), below the prey
    assert out["reward"].item() == -2.0 and env.prey_alive.all()
    assert positions(env.predator_pos) == [[(1, 2), (2, 0), (3, 2)]]
    out = step(env, out, [CATCH, STAY, CATCH])  # now two catchers touch it
    assert out["reward"].item() == 10.0 and not env.prey_alive.any()


def test_step_penalty_is_added_every_step():
    env = small_env(step_penalty=-0.5, prey_move_prob=0.0)
    td = place(env, [[1, 2], [2, 1]], [[2, 2]])
    assert step(env, td, [STAY, STAY])["reward"].item() == -0.5
    td = place(env, [[1, 2], [2, 1]], [[2, 2]])
    assert step(env, td, [CATCH, CATCH])["reward"].item() == 9.5


# ---------------------------------------------------------------- predator moves


def test_a_chain_of_predators_moves_according_to_the_drawn_order():
    """Proves predators move one at a time in the drawn order, into cells vacated earlier in
    the step: three predators in a row all moving right each succeed iff the one in front
    of them moved before them (the front one always does). All orders occur."""
    env = small_env(n_predators=3, n_prey=1, batch=200, prey_move_prob=0.0)
    td = place(env, [[2, 0], [2, 1], [2, 2]], [[0, 4]])
    step(env, td, [RIGHT, RIGHT, RIGHT])
    rank = env.last_draws.predator_order.argsort(-1)  # rank[b, i]: when predator i moved
    front_first = rank[:, 2] < rank[:, 1]
    moved_1 = front_first
    moved_0 = moved_1 & (rank[:, 1] < rank[:, 0])
    cols = env.predator_pos[..., 1]
    assert (cols[:, 2] == 3).all()
    assert torch.equal(cols[:, 1], 1 + moved_1.long())
    assert torch.equal(cols[:, 0], moved_0.long())
    assert len({tuple(r) for r in rank.tolist()}) == 6
    assert (env.predator_pos[..., 0] == 2).all()


def test_two_predators_aiming_at_one_cell_the_first_in_the_order_gets_it():
    env = small_env(batch=100, prey_move_prob=0.0)
    td = place(env, [[4, 1], [4, 3]], [[0, 0]])
    step(env, td, [RIGHT, LEFT])
    zero_first = env.last_draws.predator_order[:, 0] == 0
    expected = torch.where(
        zero_first.view(-1, 1, 1),
        torch.tensor([[4, 2], [4, 3]]),
        torch.tensor([[4, 1], [4, 2]]),
    )
    assert torch.equal(env.predator_pos, expected)
    assert 0 < zero_first.sum() < 100


@pytest.mark.parametrize(
    "predators, prey, actions, expected",
    [
        ([[2, 1], [3, 2]], [[2, 2]], [RIGHT, UP], [(2, 1), (3, 2)]),  # into the prey
        ([[3, 3], [3, 4]], [[0, 0]], [RIGHT, STAY], [(3, 3), (3, 4)]),  # standing predator
        ([[3, 3], [3, 4]], [[0, 0]], [RIGHT, CATCH], [(3, 3), (3, 4)]),  # catching predator
        ([[3, 3], [2, 3]], [[0, 0]], [UP, DOWN], [(3, 3), (2, 3)]),  # swap: both blocked
        ([[4, 1], [4, 3]], [[0, 0]], [LEFT, RIGHT], [(4, 0), (4, 4)]),  # free moves
        ([[0, 2], [4, 2]], [[0, 0]], [DOWN, UP], [(1, 2), (3, 2)]),  # up is row - 1
    ],
)
def test_blocked_and_free_moves(predators, prey, actions, expected):
    """Proves moves into a prey, a predator that does not leave, or each other's cells are
    blocked whatever the order (8 copies), and free moves go where documented."""
    env = small_env(batch=8, prey_move_prob=0.0)
    td = place(env, predators, prey)
    step(env, td, actions)
    assert positions(env.predator_pos) == [expected] * 8


def test_frozen_predators_neither_move_nor_block():
    """Proves a frozen predator ignores its action and its cell can be entered."""
    env = small_env(n_predators=3, batch=8, prey_move_prob=0.0)
    td = place(env, [[0, 0], [0, 1], [4, 0]], [[2, 2]], predator_active=[False, True, True])
    out = step(env, td, [RIGHT, LEFT, STAY])
    assert positions(env.predator_pos) == [[(0, 0), (0, 0), (4, 0)]] * 8
    assert (out["reward"] == 0).all()
    assert out["state"].view(8, 2, 5, 5)[:, 0].sum((1, 2)).tolist() == [2.0] * 8


def test_a_prey_cell_cannot_be_entered_even_if_the_prey_moves_away():
    """Proves predators move before prey: a cell holding a prey at the predators' turn is
    blocked though the prey then leaves it."""
    env = small_env(batch=16)
    td = place(env, [[2, 1], [4, 4]], [[2, 2]])
    step(env, td, [RIGHT, STAY])
    assert positions(env.predator_pos) == [[(2, 1), (4, 4)]] * 16
    assert not (env.prey_pos[:, 0] == torch.tensor([2, 2])).all(-1).any()


# ---------------------------------------------------------------- prey moves


def test_prey_moves_to_a_free_neighbour_or_stays_when_boxed_in():
    """Proves a prey moves to a free neighbour (here its only one) and stays when walls and
    predators box it in."""
    env = small_env(n_predators=4, n_prey=2, batch=16)
    # prey 0 in the top-left corner, boxed in; prey 1 in the bottom-right, only (4, 3) free
    td = place(env, [[0, 1], [1, 0], [3, 4], [2, 2]], [[0, 0], [4, 4]])
    step(env, td, [STAY] * 4)
    assert positions(env.prey_pos) == [[(0, 0), (4, 3)]] * 16


def test_prey_move_one_at_a_time_in_the_drawn_order():
    """Proves prey resolve in the drawn order against the cells at that moment: prey 0 at
    (1, 0) can only go down to (2, 0); prey 1 at (0, 0) can only take (1, 0), and only if
    prey 0 left it before prey 1's turn."""
    env = small_env(n_predators=2, n_prey=2, batch=64)
    td = place(env, [[1, 1], [0, 1]], [[1, 0], [0, 0]])
    step(env, td, [STAY, STAY])
    zero_first = (env.last_draws.prey_order[:, 0] == 0).tolist()
    for b, cells in enumerate(positions(env.prey_pos)):
        assert cells == ([(2, 0), (1, 0)] if zero_first[b] else [(2, 0), (0, 0)])
    assert 0 < sum(zero_first) < 64


def test_prey_moves_are_uniform_over_free_neighbours_and_seeded():
    """Proves an open prey reaches each of its 4 neighbours about equally often (never
    staying), one with a wall and a predator next to it each of its 2 free neighbours, and
    that set_seed makes the moves reproducible."""
    b = 2000
    env = PredatorPreyEnv(grid_size=5, n_predators=2, n_prey=2, batch_size=[b])
    env.set_seed(1)
    # prey 0 open at (2, 2); prey 1 at (0, 3): wall above, predator at (0, 4)
    td = place(env, [[4, 0], [0, 4]], [[2, 2], [0, 3]])
    step(env, td, [STAY, STAY])
    first = env.prey_pos.clone()
    moved = (first[:, 0] - 2).tolist()
    counts = [moved.count(d) for d in [[-1, 0], [1, 0], [0, -1], [0, 1]]]
    assert sum(counts) == b and all(400 < c < 600 for c in counts), counts
    cells = positions(first[:, 1:])
    counts = [cells.count([c]) for c in [(0, 2), (1, 3)]]
    assert sum(counts) == b and all(900 < c < 1100 for c in counts), counts
    env.set_seed(1)
    td = place(env, [[4, 0], [0, 4]], [[2, 2], [0, 3]])
    step(env, td, [STAY, STAY])
    assert torch.equal(env.prey_pos, first)


def test_prey_move_prob():
    """Proves prey_move_prob=0 keeps prey still and 0.5 moves open prey about half the time."""
    env = small_env(prey_move_prob=0.0, batch=4)
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    for _ in range(5):
        td = step(env, td, [STAY, STAY])
    assert positions(env.prey_pos) == [[(2, 2)]] * 4
    env = small_env(prey_move_prob=0.5, batch=1000)
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    step(env, td, [STAY, STAY])
    stayed = (env.prey_pos[:, 0] == torch.tensor([2, 2])).all(-1)
    assert torch.equal(stayed, ~env.last_draws.prey_moves[:, 0])
    assert 400 < stayed.sum() < 600


# ---------------------------------------------------------------- ends


@pytest.mark.parametrize(("kwargs", "reward"), [({}, 10.0), ({"capture_reward": 5.0}, 5.0)])
def test_capturing_the_last_prey_terminates(kwargs, reward):
    """Proves a capture pays capture_reward (10 by default, 5 when set) and capturing the
    last prey terminates the episode (not truncated)."""
    env = small_env(n_predators=3, batch=2, **kwargs)
    td = place(env, [[1, 2], [2, 1], [4, 4]], [[2, 2]])
    out = step(env, td, [CATCH, CATCH, STAY])
    assert (out["reward"] == reward).all()
    assert out["terminated"].all() and out["done"].all() and not out["truncated"].any()


def test_all_predators_frozen_terminates_but_one_active_predator_does_not():
    """Proves the episode ends when every predator is frozen (prey left), and not while one
    active predator remains (though it can no longer capture anything)."""
    env = small_env(n_predators=2, n_prey=2, batch=2)
    td = place(env, [[1, 2], [2, 1]], [[2, 2], [4, 4]])
    out = step(env, td, [CATCH, CATCH])
    assert env.prey_alive.tolist() == [[False, True]] * 2
    assert out["terminated"].all() and not out["truncated"].any()
    env = small_env(n_predators=3, n_prey=2, batch=2)
    td = place(env, [[1, 2], [2, 1], [4, 0]], [[2, 2], [0, 4]])
    out = step(env, td, [CATCH, CATCH, STAY])
    assert env.predator_active.tolist() == [[False, False, True]] * 2
    assert not out["done"].any()
    out = step(env, out, [STAY, STAY, STAY])
    assert not out["done"].any()


def test_truncation_at_episode_limit_is_not_termination():
    """Proves the time limit sets truncated and done but never terminated, t counts in the
    state with state_time."""
    env = small_env(episode_limit=3, state_time=True)
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    for t in range(1, 4):
        out = step(env, td, [STAY, STAY])
        assert out["truncated"].item() == (t == 3) and out["done"].item() == (t == 3)
        assert not out["terminated"].item()
        assert out["state"][0, -1].item() == pytest.approx(t / 3)
        td = out


def test_capture_at_the_limit_is_terminated_not_truncated():
    """Proves a terminal capture on the last step is reported as termination only."""
    env = small_env(episode_limit=3)
    td = place(env, [[1, 2], [2, 1]], [[2, 2]], t=2)
    out = step(env, td, [CATCH, CATCH])
    assert out["terminated"].item() and not out["truncated"].item()


# ---------------------------------------------------------------- batch, reference, seeds


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"obs_radius": 1, "step_penalty": -0.1, **OPTIONS},
        {
            "prey_move_prob": 0.5,
            "obs_radius": 0,
            "miscapture_punishment": 0.0,
            "capture_reward": 5.0,
        },
    ],
)
def test_batched_steps_match_the_literal_reference(kwargs):
    """Proves the vectorised step implements the rules: 16 envs (6x6, 4 predators, 4 prey)
    stepped together for 40 auto-resetting steps of catch-biased random actions give, env by
    env, the same positions, frozen/captured flags, t, observations, masks, states, rewards
    and done flags as reference_step (the rules written out for one env in plain python)
    given the env's drawn orders and prey scores."""
    b = 16
    env = PredatorPreyEnv(
        grid_size=6, n_predators=4, n_prey=4, episode_limit=12, batch_size=[b], **kwargs
    )
    env.set_seed(3)
    generator = torch.Generator().manual_seed(0)
    td = env.reset()
    expected = [snapshot(env, i) for i in range(b)]
    captures = lone_catches = 0
    for _ in range(40):
        for i in range(b):
            assert_observation_matches(env, td, i, expected[i])
        action = biased_actions(td["agents", "action_mask"], generator)
        td["agents", "action"] = action
        out, td = env.step_and_maybe_reset(td)
        nxt = out["next"]
        for i in range(b):
            reward, terminated, truncated, n_captures, n_lone = reference_step(
                env, expected[i], action[i].tolist(), draws_of(env, i)
            )
            captures, lone_catches = captures + n_captures, lone_catches + n_lone
            assert nxt["reward"][i].item() == pytest.approx(reward)
            assert nxt["terminated"][i].item() == terminated
            assert nxt["truncated"][i].item() == truncated
            assert nxt["done"][i].item() == (terminated or truncated)
            assert_observation_matches(env, nxt, i, expected[i])
            if terminated or truncated:
                expected[i] = snapshot(env, i)  # auto-reset: a fresh state, checked next turn
                assert expected[i]["t"] == 0
            else:
                assert snapshot(env, i) == expected[i]
    assert captures >= 5 and lone_catches >= 5


def test_batch_equals_envs_stepped_one_by_one_with_the_same_draws():
    """Proves batching changes nothing: B envs stepped together give the same observations,
    masks, states, rewards and flags as B single envs started from the same states and fed
    the batch's draws (through the _draw_step_randomness hook)."""
    b, kwargs = 8, dict(grid_size=6, n_predators=4, n_prey=3, episode_limit=30)
    batched = PredatorPreyEnv(batch_size=[b], **kwargs)
    batched.set_seed(3)
    td = batched.reset()
    singles = [PredatorPreyEnv(batch_size=[1], **kwargs) for _ in range(b)]
    single_tds = [
        env.set_state(batched.predator_pos[i : i + 1], batched.prey_pos[i : i + 1])
        for i, env in enumerate(singles)
    ]
    generator = torch.Generator().manual_seed(0)
    keys = [("agents", "observation"), ("agents", "action_mask"), "state"]
    rewards = []
    for _ in range(30):
        action = biased_actions(td["agents", "action_mask"], generator)
        td = batched.step(td.set(("agents", "action"), action))["next"]
        rewards.append(td["reward"])
        draws = batched.last_draws
        for i, env in enumerate(singles):
            mine = pp.StepDraws(*(d[i : i + 1] for d in draws))
            env._draw_step_randomness = lambda mine=mine: mine
            single_tds[i].set(("agents", "action"), action[i : i + 1])
            single_tds[i] = env.step(single_tds[i])["next"]
            for key in [*keys, "reward", "done", "terminated", "truncated"]:
                assert torch.equal(single_tds[i][key][0], td[key][i]), key
    rewards = torch.cat(rewards)
    assert (rewards >= 10).any() and (rewards < 0).any()  # captures and lone catches
    assert batched.t.tolist() == [30] * b


def test_set_seed_makes_resets_and_steps_reproducible():
    def run(seed):
        env = PredatorPreyEnv(batch_size=[4])
        env.set_seed(seed)
        torch.manual_seed(0)
        return env.rollout(30, break_when_any_done=False)

    first, second, other = run(5), run(5), run(6)
    for key in ["state", ("next", "reward"), ("agents", "action")]:
        assert torch.equal(first[key], second[key])
    assert not torch.equal(first["state"], other["state"])


def test_partial_reset_only_resets_masked_envs():
    """Proves a "_reset" mask resets exactly those envs and leaves the others untouched."""
    env = PredatorPreyEnv(
        grid_size=5, n_predators=2, n_prey=1, batch_size=[3], episode_limit=4, state_time=True
    )
    env.set_seed(0)
    predators = torch.tensor([[[1, 2], [2, 1]], [[0, 0], [4, 4]], [[1, 2], [2, 1]]])
    prey = torch.tensor([[[2, 2]], [[2, 2]], [[2, 2]]])
    td = env.set_state(predators, prey)
    td["agents", "action"] = torch.tensor([[CATCH, CATCH], [STAY, STAY], [STAY, STAY]])
    out, td_next = env.step_and_maybe_reset(td)
    assert out["next", "done"][:, 0].tolist() == [True, False, False]
    assert env.predator_active.all() and env.prey_alive.all()
    assert env.t.tolist() == [0, 1, 1]
    assert not td_next["done"].any()
    assert td_next["state"][0, -1].item() == 0.0 and td_next["state"][1, -1].item() == 0.25
    assert env.predator_pos[1:].tolist() == predators[1:].tolist()
    before = env.predator_pos.clone(), env.prey_pos.clone()
    mask = torch.tensor([[False], [True], [False]])
    td_reset = env.reset(td_next.set("_reset", mask))
    assert env.t.tolist() == [0, 0, 1]
    assert torch.equal(env.predator_pos[[0, 2]], before[0][[0, 2]])
    assert torch.equal(env.prey_pos[[0, 2]], before[1][[0, 2]])
    assert torch.equal(td_reset["state"][2], td_next["state"][2])


def test_random_rollout_keeps_the_grid_consistent():
    """Proves 100 auto-resetting random steps on batch 8 never put two things on one cell and
    keep the state's counts equal to the active predators and alive prey."""
    torch.manual_seed(0)
    env = PredatorPreyEnv(batch_size=[8], episode_limit=25)
    env.set_seed(0)
    rollout = env.rollout(100, break_when_any_done=False)
    grid = rollout["next", "state"].view(8, 100, 2, 10, 10)
    assert grid.sum(2).max() <= 1
    assert rollout["next", "done"].any()
    assert rollout["next", "reward"].dtype == torch.float32
    assert (rollout["next", "reward"] != 0).any()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"grid_size": 1, "n_predators": 2, "n_prey": 1}, "grid_size must be >= 2"),
        ({"n_predators": 0}, "n_predators must be >= 2"),
        ({"n_predators": 1}, "a capture needs two"),
        ({"n_prey": 0}, "n_prey must be >= 1"),
        ({"grid_size": 3, "n_predators": 5, "n_prey": 5}, "does not fit"),
        ({"episode_limit": 0}, "episode_limit must be >= 1"),
        ({"obs_radius": -1}, "obs_radius must be >= 0"),
        ({"prey_move_prob": 1.5}, "prey_move_prob"),
        ({"batch_size": [2, 2]}, "1-d batch_size"),
        ({"grid_size": 2.5}, "grid_size must be a whole number, got 2.5"),  # was truncated
        ({"episode_limit": 20.5}, "episode_limit must be a whole number"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PredatorPreyEnv(**kwargs)


@pytest.mark.parametrize(
    "predators, prey, kwargs, message",
    [
        ([[0, 0], [0, 0]], [[2, 2]], {}, "share a cell"),
        ([[0, 0], [2, 2]], [[2, 2]], {}, "share a cell"),
        ([[0, 0], [0, 5]], [[2, 2]], {}, "outside"),
        ([[0, 0]], [[2, 2]], {}, "predator_pos must have shape"),
        ([[0, 0], [1, 1]], [[2, 2]], {"t": 201}, "t must be in"),
    ],
)
def test_bad_set_state_is_rejected(predators, prey, kwargs, message):
    env = small_env()
    with pytest.raises(ValueError, match=message):
        place(env, predators, prey, **kwargs)


def test_set_state_allows_frozen_and_captured_things_to_overlap():
    """Proves frozen predators and captured prey do not occupy their cells."""
    env = small_env()
    td = place(env, [[0, 0], [0, 0]], [[0, 0]], predator_active=[True, False], prey_alive=[0])
    assert td["terminated"].item()


def test_wrong_action_shape_is_rejected():
    env = small_env(batch=2)
    td = env.reset()
    td["agents", "action"] = torch.zeros(2, 2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="expected integer actions of shape"):
        env.step(td)
    # out of range or fractional: -1 moved a predator up and 6 stayed, 0.7 was truncated
    for action in ([[-1, 0], [0, 0]], [[6, 0], [0, 0]], [[0.7, 0.0], [0.0, 0.0]]):
        td = env.reset()
        td["agents", "action"] = torch.tensor(action)
        with pytest.raises(ValueError, match="actions"):
            env.step(td)


def test_docstring_example_runs():
    """Proves the class docstring's example is correct."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(PredatorPreyEnv, globs={"torch": torch, **vars(pp)}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_the_hare_channel_is_an_always_zero_third_channel_and_changes_nothing_else():
    """``hare_channel=True`` gives the reference's input sizes (75 / 300 features): the
    window and the grid gain a third channel, always 0; the game is the same draw for draw."""
    plain = PredatorPreyEnv(batch_size=[4], grid_size=6, n_prey=4)
    hare = PredatorPreyEnv(batch_size=[4], grid_size=6, n_prey=4, hare_channel=True)
    plain.set_seed(5), hare.set_seed(5)
    torch.manual_seed(0)
    a, b = plain.reset(), hare.reset()
    for _ in range(30):
        obs, obs_h = a["agents", "observation"], b["agents", "observation"]
        assert torch.equal(obs_h[..., :50], obs) and not obs_h[..., 50:].any()
        assert torch.equal(b["state"][..., :72], a["state"]) and not b["state"][..., 72:].any()
        assert torch.equal(a["agents", "action_mask"], b["agents", "action_mask"])
        action = plain.rand_action(a)["agents", "action"]
        a["agents", "action"], b["agents", "action"] = action, action.clone()
        a, b = plain.step(a), hare.step(b)
        assert torch.equal(a["next", "reward"], b["next", "reward"])
        assert torch.equal(a["next", "done"], b["next", "done"])
        if a["next", "done"].any():
            break
        a, b = plain.step_mdp(a), hare.step_mdp(b)


def test_make_env_ties_the_episode_limit_to_max_steps_and_checks_n_envs():
    """A dict config without ``episode_limit`` built 200-step episodes for ``max_steps=20``
    (the collector then blamed ``max_steps``); two different numbers are refused; ``n_envs``
    below 1 failed differently in every family (an empty rollout for the matrix game)."""
    from resq_torchrl.errors import ConfigError
    from resq_torchrl.training.builders import make_env

    small = {"name": "predator_prey", "grid_size": 4, "n_predators": 2, "n_prey": 1}
    env = make_env({**small, "max_steps": 20}, 2)
    assert env.base_env.episode_limit == 20
    with pytest.raises(ConfigError, match="env.episode_limit=30 and env.max_steps=20 differ"):
        make_env({**small, "max_steps": 20, "episode_limit": 30}, 2)
    for family in ({"name": "matrix_game"}, {**small, "max_steps": 20}):
        for n_envs in (0, -1, 1.5):
            with pytest.raises(
                ConfigError, match=f"n_envs must be a whole number >= 1, got {n_envs}"
            ):
                make_env(family, n_envs)
