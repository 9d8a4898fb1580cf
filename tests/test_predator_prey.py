import doctest

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from resq_torchrl.envs import PredatorPreyEnv
from resq_torchrl.envs import predator_prey as pp
from resq_torchrl.envs.predator_prey import CATCH, DOWN, LEFT, RIGHT, STAY, UP


def small_env(n_predators=2, n_prey=1, batch=1, **kwargs):
    """A 5x5 grid where prey never move unless asked: every outcome is deterministic."""
    kwargs.setdefault("prey_move_prob", 0.0)
    return PredatorPreyEnv(
        grid_size=5, n_predators=n_predators, n_prey=n_prey, batch_size=[batch], **kwargs
    )


def place(env, predators, prey, **kwargs):
    """``set_state`` from plain lists of ``(row, col)`` for a batch of one."""
    return env.set_state(torch.tensor([predators]), torch.tensor([prey]), **kwargs)


def step(env, td, actions):
    td["agents", "action"] = torch.tensor(actions).reshape(env.batch_size[0], -1)
    return env.step(td)["next"]


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": [3]}, {"grid_size": 5, "n_predators": 2, "n_prey": 1, "batch_size": [2]}],
)
def test_check_env_specs(kwargs):
    """Proves the specs match what reset and step produce, default and smallest config."""
    check_env_specs(PredatorPreyEnv(**kwargs))


def test_shapes_and_reset_places_everything_on_distinct_cells():
    """Proves the documented shapes and that a reset uses N + M distinct cells in the grid."""
    env = PredatorPreyEnv(batch_size=[4])
    td = env.reset()
    assert td["agents", "observation"].shape == (4, 8, 3 * 25 + 2)
    assert td["agents", "action_mask"].shape == (4, 8, 6)
    assert td["state"].shape == (4, 2 * 100 + 1)
    cells = torch.cat([env.predator_pos, env.prey_pos], dim=1)
    flat = cells[..., 0] * 10 + cells[..., 1]
    assert all(len(set(row.tolist())) == 16 for row in flat)
    assert ((cells >= 0) & (cells < 10)).all()
    grid = td["state"][:, :200].view(4, 2, 10, 10)
    assert grid[:, 0].sum().item() == 4 * 8 and grid[:, 1].sum().item() == 4 * 8
    assert (td["state"][:, -1] == 0).all()


def test_observation_window_channels_and_own_position():
    """Proves the window layout [3, K, K] (predators, prey, outside) and the (row, col) tail."""
    env = small_env(obs_radius=1)
    td = place(env, [[0, 0], [1, 1]], [[0, 1]])
    obs = td["agents", "observation"][0, 0]
    window = obs[:27].view(3, 3, 3)
    assert window[0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 1]]  # itself and predator 1
    assert window[1].tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 0]]  # prey to its right
    assert window[2].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]  # top and left walls
    assert obs[27:].tolist() == [0.0, 0.0]
    assert td["agents", "observation"][0, 1, 27:].tolist() == [0.25, 0.25]


def test_joint_catch_captures_removes_both_and_terminates_on_last_prey():
    """Proves a two-predator catch pays capture_reward, removes the prey and both catchers
    (only stay allowed, zero observation), and ends the episode when no prey is left."""
    env = small_env(n_predators=3)
    td = place(env, [[1, 2], [2, 1], [4, 4]], [[2, 2]])
    assert td["agents", "action_mask"][0, :2, CATCH].all()
    out = step(env, td, [CATCH, CATCH, STAY])
    assert out["reward"].item() == 10.0
    assert not env.prey_alive.any()
    assert env.predator_active[0].tolist() == [False, False, True]
    assert out["agents", "action_mask"][0, :2].tolist() == [[False] * 4 + [True, False]] * 2
    assert (out["agents", "observation"][0, :2] == 0).all()
    assert out["agents", "observation"][0, 2].abs().sum() > 0
    assert out["state"][0, :50].sum().item() == 1.0  # only the third predator is left
    assert out["terminated"].item() and out["done"].item() and not out["truncated"].item()


def test_joint_catch_with_prey_left_continues_and_prey_is_gone_from_observations():
    """Proves a capture that leaves prey and >= 2 predators does not end the episode."""
    env = small_env(n_predators=4, n_prey=2)
    td = place(env, [[1, 2], [2, 1], [4, 3], [3, 4]], [[2, 2], [4, 4]])
    out = step(env, td, [CATCH, CATCH, STAY, STAY])
    assert out["reward"].item() == 10.0
    assert env.prey_alive[0].tolist() == [False, True]
    assert not out["done"].item()
    assert out["state"][0, 25:50].sum().item() == 1.0


def test_too_few_predators_left_terminates():
    """Proves the episode terminates when fewer than two active predators remain."""
    env = small_env(n_predators=3, n_prey=2)
    td = place(env, [[1, 2], [2, 1], [4, 3]], [[2, 2], [0, 4]])
    out = step(env, td, [CATCH, CATCH, STAY])
    assert out["terminated"].item() and env.prey_alive[0].tolist() == [False, True]


@pytest.mark.parametrize("punishment", [-2.0, 0.0])
def test_lone_catch_is_punished_and_removes_nothing(punishment):
    """Proves a lone catch pays miscapture_punishment (0 in the easy variant), removes nothing
    and leaves everyone in place."""
    env = small_env(miscapture_punishment=punishment)
    td = place(env, [[1, 2], [4, 4]], [[2, 2]])
    out = step(env, td, [CATCH, STAY])
    assert out["reward"].item() == punishment
    assert env.prey_alive.all() and env.predator_active.all()
    assert env.predator_pos[0].tolist() == [[1, 2], [4, 4]]
    assert not out["done"].item()


def test_two_lone_catches_on_different_prey_are_each_punished():
    """Proves the punishment is counted once per catching predator that captures nothing."""
    env = small_env(n_prey=2)
    td = place(env, [[0, 0], [4, 4]], [[0, 1], [4, 3]])
    out = step(env, td, [CATCH, CATCH])
    assert out["reward"].item() == -4.0
    assert env.prey_alive.all()


def test_catch_targets_first_adjacent_prey_in_up_down_left_right_order():
    """Proves the documented rule: predator 0 has prey above and to its left, so its catch
    goes to the prey above; predator 1 only touches the left prey, so nothing is captured."""
    env = small_env(n_prey=2)
    td = place(env, [[2, 2], [3, 1]], [[1, 2], [2, 1]])
    out = step(env, td, [CATCH, CATCH])
    assert out["reward"].item() == -4.0 and env.prey_alive.all()
    td = place(env, [[2, 2], [0, 2]], [[1, 2], [2, 1]])  # predator 1 now above the upper prey
    out = step(env, td, [CATCH, CATCH])
    assert out["reward"].item() == 10.0 and env.prey_alive[0].tolist() == [False, True]


def test_step_penalty_is_added_every_step():
    """Proves step_penalty is part of the team reward at every step."""
    env = small_env(step_penalty=-0.5)
    td = place(env, [[1, 2], [2, 1]], [[2, 2]])
    assert step(env, td, [STAY, STAY])["reward"].item() == -0.5
    td = place(env, [[1, 2], [2, 1]], [[2, 2]])
    assert step(env, td, [CATCH, CATCH])["reward"].item() == 9.5


@pytest.mark.parametrize(
    "predators, actions, expected",
    [
        ([[0, 0], [4, 4]], [UP, DOWN], [[0, 0], [4, 4]]),  # into walls
        ([[0, 0], [4, 4]], [LEFT, RIGHT], [[0, 0], [4, 4]]),  # into walls
        ([[2, 1], [3, 2]], [RIGHT, UP], [[2, 1], [3, 2]]),  # into the prey at (2, 2)
        ([[3, 3], [3, 4]], [RIGHT, STAY], [[3, 3], [3, 4]]),  # into a standing predator
        ([[3, 3], [3, 4]], [RIGHT, DOWN], [[3, 3], [4, 4]]),  # into a cell being vacated
        ([[4, 1], [4, 3]], [RIGHT, LEFT], [[4, 2], [4, 3]]),  # same target: lower index wins
        ([[4, 1], [4, 3]], [LEFT, RIGHT], [[4, 0], [4, 4]]),  # free moves
        ([[0, 2], [4, 2]], [DOWN, UP], [[1, 2], [3, 2]]),  # up is row - 1
    ],
)
def test_blocked_and_free_moves(predators, actions, expected):
    """Proves moves into a wall, a prey, a predator (standing or leaving) or a cell a
    lower-index predator also targets are blocked, and free moves go where documented."""
    env = small_env()
    td = place(env, predators, [[2, 2]])
    step(env, td, actions)
    assert env.predator_pos[0].tolist() == expected
    assert env.prey_pos[0].tolist() == [[2, 2]]


def test_cells_freed_by_a_capture_can_be_entered_in_the_same_step():
    """Proves catches resolve before moves: the captured prey's cell is free at once."""
    env = small_env(n_predators=3, n_prey=2)
    td = place(env, [[1, 2], [2, 1], [2, 3]], [[2, 2], [4, 4]])
    step(env, td, [CATCH, CATCH, LEFT])
    assert env.predator_pos[0, 2].tolist() == [2, 2]


def test_removed_predator_ignores_its_action_and_frees_its_cell():
    """Proves an inactive predator neither moves, catches nor blocks another one."""
    env = small_env(n_predators=3)
    td = place(env, [[0, 0], [0, 1], [4, 0]], [[2, 2]], predator_active=[[False, True, True]])
    out = step(env, td, [RIGHT, LEFT, CATCH])
    assert env.predator_pos[0, :2].tolist() == [[0, 0], [0, 0]]
    assert out["reward"].item() == -2.0  # only predator 2's lone catch counts


def test_masks_catch_only_next_to_prey_and_removed_predator_only_stays():
    """Proves the action mask: moves and stay always, catch only when a live prey is in the
    4-neighbourhood (not diagonal), only stay for a removed predator."""
    env = small_env(n_predators=4, n_prey=2)
    td = place(
        env,
        [[1, 2], [1, 1], [0, 0], [4, 0]],
        [[2, 2], [4, 1]],
        predator_active=[[True, True, True, False]],
        prey_alive=[[True, False]],
    )
    mask = td["agents", "action_mask"][0]
    assert mask[:3, :CATCH].all()
    assert mask[:, CATCH].tolist() == [True, False, False, False]  # (1, 1) is diagonal
    assert mask[3].tolist() == [False] * 4 + [True, False]


def test_prey_moves_to_its_only_free_neighbour_or_stays_when_surrounded():
    """Proves a prey moves to a free neighbour (here its only one) and stays when walls and
    predators box it in; with prey_move_prob=0 prey never move."""
    env = small_env(n_predators=4, n_prey=2, prey_move_prob=1.0)
    env.set_seed(0)
    for _ in range(5):
        # prey 0 in the top-left corner, boxed in; prey 1 in the bottom-right, only (4, 3) free
        td = place(env, [[0, 1], [1, 0], [3, 4], [2, 2]], [[0, 0], [4, 4]])
        step(env, td, [STAY] * 4)
        assert env.prey_pos[0].tolist() == [[0, 0], [4, 3]]
    env = small_env(prey_move_prob=0.0)
    td = place(env, [[0, 0], [4, 4]], [[2, 2]])
    for _ in range(5):
        td = step(env, td, [STAY, STAY])
    assert env.prey_pos[0].tolist() == [[2, 2]]


def test_prey_do_not_move_onto_each_other():
    """Proves prey resolve in index order: prey 0 leaves (1, 0), its only way out, then prey 1
    may take the cell prey 0 just freed but never the one prey 0 now holds."""
    env = small_env(n_predators=2, n_prey=2, prey_move_prob=1.0)
    env.set_seed(0)
    for _ in range(10):
        # prey 0 at (1, 0): up (0, 0) is prey 1, right (1, 1) is a predator, down (2, 0) free
        # prey 1 at (0, 0): right (0, 1) is a predator, down (1, 0) is free once prey 0 left
        td = place(env, [[1, 1], [0, 1]], [[1, 0], [0, 0]])
        step(env, td, [STAY, STAY])
        assert env.prey_pos[0].tolist() == [[2, 0], [1, 0]]


def test_prey_moves_are_uniform_over_free_neighbours_and_seeded():
    """Proves an open prey reaches each of its 4 neighbours about equally often, and that
    set_seed makes prey moves reproducible."""
    env = PredatorPreyEnv(grid_size=5, n_predators=2, n_prey=1, batch_size=[2000])
    b = 2000
    predators = torch.tensor([[0, 0], [4, 4]]).expand(b, 2, 2)
    prey = torch.tensor([[2, 2]]).expand(b, 1, 2)
    stay = torch.full((b, 2), STAY)
    env.set_seed(1)
    td = env.set_state(predators, prey)
    env.step(td.set(("agents", "action"), stay))
    first = env.prey_pos.clone()
    moved = (first[:, 0] - 2).tolist()
    counts = {tuple(d): moved.count(d) for d in [[-1, 0], [1, 0], [0, -1], [0, 1]]}
    assert sum(counts.values()) == b
    assert all(400 < c < 600 for c in counts.values()), counts
    env.set_seed(1)
    td = env.set_state(predators, prey)
    env.step(td.set(("agents", "action"), stay))
    assert torch.equal(env.prey_pos, first)


def test_truncation_at_episode_limit_is_not_termination():
    """Proves the time limit sets truncated and done but never terminated."""
    env = small_env(episode_limit=3)
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


def random_masked_actions(mask, generator=None):
    """One action per agent drawn uniformly among its allowed ones, ``[B, N]``."""
    b, n, a = mask.shape
    return torch.multinomial(mask.reshape(-1, a).float(), 1, generator=generator).view(b, n)


def test_batch_equals_envs_stepped_one_by_one():
    """Proves batching changes nothing: B envs stepped together (prey_move_prob=0) give the
    same observations, masks, states, rewards and flags as each env stepped alone."""
    b, steps = 6, 8
    kwargs = dict(grid_size=6, n_predators=4, n_prey=3, prey_move_prob=0.0, episode_limit=7)
    batched = PredatorPreyEnv(batch_size=[b], **kwargs)
    batched.set_seed(3)
    td = batched.reset()
    singles = [PredatorPreyEnv(batch_size=[1], **kwargs) for _ in range(b)]
    single_tds = [
        env.set_state(batched.predator_pos[i : i + 1], batched.prey_pos[i : i + 1])
        for i, env in enumerate(singles)
    ]
    keys = [("agents", "observation"), ("agents", "action_mask"), "state"]
    for i in range(b):
        for key in keys:
            assert torch.equal(single_tds[i][key][0], td[key][i]), key
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        # bias towards catch so that captures and lone catches happen
        mask = td["agents", "action_mask"]
        weights = mask.float() * torch.tensor([1.0, 1, 1, 1, 1, 6])
        action = torch.multinomial(weights.view(-1, 6), 1, generator=generator).view(b, -1)
        td = batched.step(td.set(("agents", "action"), action))["next"]
        for i, env in enumerate(singles):
            single_tds[i].set(("agents", "action"), action[i : i + 1])
            single_tds[i] = env.step(single_tds[i])["next"]
            for key in [*keys, "reward", "done", "terminated", "truncated"]:
                assert torch.equal(single_tds[i][key][0], td[key][i]), key
    assert not batched.prey_alive.all()  # the biased actions did capture something
    assert batched.predator_active.any()


def test_partial_reset_only_resets_masked_envs():
    """Proves a "_reset" mask resets exactly those envs and leaves the others untouched."""
    env = PredatorPreyEnv(grid_size=5, n_predators=2, n_prey=1, batch_size=[3], episode_limit=4)
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
    assert env.predator_pos[1:, :].tolist() == predators[1:].tolist()
    before = env.predator_pos.clone(), env.prey_pos.clone()
    mask = torch.tensor([[False], [True], [False]])
    env.set_seed(5)
    td_reset = env.reset(td_next.set("_reset", mask))
    assert env.t.tolist() == [0, 0, 1]
    assert torch.equal(env.predator_pos[[0, 2]], before[0][[0, 2]])
    assert torch.equal(env.prey_pos[[0, 2]], before[1][[0, 2]])
    assert torch.equal(td_reset["state"][2], td_next["state"][2])


def masked_random_policy(td):
    return td.set(("agents", "action"), random_masked_actions(td["agents", "action_mask"]))


def test_random_rollout_keeps_masks_and_grid_consistent():
    """Proves 50 auto-resetting steps on batch 4 with random masked actions never leave an
    agent without an allowed action nor put two things on one cell, and env.rollout runs."""
    env = PredatorPreyEnv(batch_size=[4], episode_limit=20)
    env.set_seed(0)
    generator = torch.Generator().manual_seed(0)
    td = env.reset()
    for _ in range(50):
        mask = td["agents", "action_mask"]
        assert mask.any(-1).all() and mask[..., STAY].all()
        grid = td["state"][:, :200].view(4, 2, 10, 10)
        assert grid.sum(1).max() <= 1  # one thing per cell
        assert torch.equal(grid[:, 0].sum((-1, -2)), env.predator_active.sum(-1).float())
        assert torch.equal(grid[:, 1].sum((-1, -2)), env.prey_alive.sum(-1).float())
        td["agents", "action"] = random_masked_actions(mask, generator)
        _, td = env.step_and_maybe_reset(td)
    rollout = env.rollout(50, masked_random_policy, break_when_any_done=False)
    assert rollout.shape == (4, 50)
    taken = rollout["agents", "action_mask"].gather(-1, rollout["agents", "action"].unsqueeze(-1))
    assert taken.all()
    assert rollout["next", "reward"].dtype == torch.float32
    assert rollout["next", "done"].any()  # episode_limit=20 forces at least truncation


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


def test_set_state_allows_removed_things_to_overlap():
    """Proves removed predators and captured prey do not count as occupying a cell."""
    env = small_env()
    td = place(env, [[0, 0], [0, 0]], [[0, 0]], predator_active=[[True, False]], prey_alive=[[0]])
    assert td["terminated"].item()


def test_wrong_action_shape_is_rejected():
    env = small_env(batch=2)
    td = env.reset()
    td["agents", "action"] = torch.zeros(2, 2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="expected actions of shape"):
        env.step(td)


def test_docstring_example_runs():
    """Proves the class docstring's example is correct."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(PredatorPreyEnv, globs={"torch": torch, **vars(pp)}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
