import itertools

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from resq_torchrl.envs import PAPER_PAYOFF, MatrixGameEnv, payoff_tensor


@pytest.mark.parametrize(
    "payoff", [None, [[1, 2], [3, 4]], torch.arange(27.0).reshape(3, 3, 3).tolist()]
)
def test_check_env_specs(payoff):
    check_env_specs(MatrixGameEnv(payoff, batch_size=[4]))


def test_reward_is_payoff_of_every_joint_action_and_episode_terminates():
    env = MatrixGameEnv(batch_size=[9])
    td = env.reset()
    assert td["agents", "observation"].shape == (9, 2, 1)
    assert td["state"].shape == (9, 1)
    assert td["agents", "action_mask"].all() and td["agents", "action_mask"].shape == (9, 2, 3)
    joint = env.joint_actions()
    assert joint.tolist() == [list(u) for u in itertools.product(range(3), repeat=2)]
    td["agents", "action"] = joint
    out = env.step(td)["next"]
    # the paper's game, written out: rows agent 1's action, columns agent 2's, row-major
    expected = torch.tensor([8.0, -12.0, -12.0, -12.0, 0.0, 0.0, -12.0, 0.0, 7.9])
    torch.testing.assert_close(out["reward"].squeeze(-1), expected, rtol=0, atol=0)
    assert PAPER_PAYOFF == [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]]
    assert out["terminated"].all() and out["done"].all() and not out["truncated"].any()


def test_three_agent_game_reward_indexes_all_agents():
    payoff = torch.randn(2, 2, 2)
    env = MatrixGameEnv(payoff, batch_size=[8])
    assert env.n_agents == 3 and env.n_actions == 2
    td = env.reset()
    td["agents", "action"] = env.joint_actions()
    reward = env.step(td)["next", "reward"].squeeze(-1)
    torch.testing.assert_close(reward, payoff.reshape(-1))


def test_the_first_agent_picks_the_row_and_the_second_the_column():
    """An asymmetric 2x2 game (the paper's is symmetric): joint action (0, 1) pays row 0,
    column 1 = 2 and (1, 0) pays 3."""
    env = MatrixGameEnv([[1, 2], [3, 4]], batch_size=[2])
    td = env.reset()
    td["agents", "action"] = torch.tensor([[0, 1], [1, 0]])
    assert env.step(td)["next", "reward"].squeeze(-1).tolist() == [2.0, 3.0]


def test_rollout_resets_between_one_step_episodes(monkeypatch):
    """``rollout(4, break_when_any_done=False)``: every step ends its episode (``next`` done
    and terminated), the env is reset after each of the first 3 steps (every game of the
    batch), so every step starts from a fresh episode: root ``done`` False (a missing reset
    would carry the previous step's ``done`` True over) and the start observation and state
    (ones); each reward is the payoff of that step's actions."""
    env = MatrixGameEnv(batch_size=[5])
    resets = []
    reset = env._reset

    def spy(tensordict=None, **kwargs):
        mask = None if tensordict is None else tensordict.get("_reset", None)
        resets.append(None if mask is None else mask.reshape(-1).tolist())
        return reset(tensordict, **kwargs)

    monkeypatch.setattr(env, "_reset", spy)
    rollout = env.rollout(4, break_when_any_done=False)
    assert rollout.shape == (5, 4)
    assert rollout["next", "terminated"].all() and rollout["next", "done"].all()
    assert not rollout["done"].any() and not rollout["terminated"].any()
    assert resets[0] is None  # the rollout's first reset, of every game
    assert len(resets) >= 4 and resets[1:] == [[True] * 5] * (len(resets) - 1)
    assert (rollout["agents", "observation"] == 1).all() and (rollout["state"] == 1).all()
    assert (rollout["next", "state"] == 1).all()
    payoff = torch.tensor(PAPER_PAYOFF)
    actions = rollout["agents", "action"]
    torch.testing.assert_close(
        rollout["next", "reward"].squeeze(-1), payoff[actions[..., 0], actions[..., 1]]
    )


@pytest.mark.parametrize(
    "payoff, message",
    [
        ([[1, 2], [3]], "ragged"),
        ([1.0, 2.0, 3.0], "at least 2 agents"),
        ([[1, 2, 3], [4, 5, 6]], "same number of actions"),
        ([[1, float("nan")], [3, 4]], "finite"),
        ([[1, float("inf")], [3, 4]], "finite"),
        ([["a", 1], [2, 3]], "ragged or not numeric"),
        ([[1]], "at least 2 actions"),
    ],
)
def test_bad_payoff_is_rejected_with_a_clear_error(payoff, message):
    with pytest.raises(ValueError, match=message):
        payoff_tensor(payoff)
    with pytest.raises(ValueError, match=message):
        MatrixGameEnv(payoff)


def test_wrong_action_shape_is_rejected():
    env = MatrixGameEnv(batch_size=[2])
    td = env.reset()
    td["agents", "action"] = torch.zeros(2, 2, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="expected integer actions of shape"):
        env.step(td)
    # -1 paid the last cell and 0.7 the first, in silence
    for action, message in (([[-1, -1], [0, 0]], "must lie in"), ([[0.7, 0.2], [0, 0]], "integer")):
        td = env.reset()
        td["agents", "action"] = torch.tensor(action)
        with pytest.raises(ValueError, match=message):
            env.step(td)


def test_rand_transition_equals_rand_step_of_reset_and_is_fresh_each_call():
    env = MatrixGameEnv(batch_size=[16])
    torch.manual_seed(5)
    plain = [env.rand_step(env.reset()) for _ in range(4)]
    torch.manual_seed(5)
    lean = [env.rand_transition() for _ in range(4)]
    for a, b in zip(plain, lean, strict=True):
        assert set(a.keys(True, True)) == set(b.keys(True, True))
        assert (a == b).all()
    after = torch.rand(3)  # both drew exactly the same numbers from the generator
    torch.manual_seed(5)
    for _ in range(4):
        env.rand_step(env.reset())
    assert torch.equal(after, torch.rand(3))
    lean[0]["agents", "observation"].add_(7.0)  # a caller writing into its batch
    assert (env.rand_transition()["agents", "observation"] == 1).all()
