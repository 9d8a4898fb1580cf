"""The PettingZoo MPE adapter (mpe2): specs, vocabulary, truncation, team reward against the raw
mpe2 env, heterogeneous padding, seeding, and short training runs."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mpe2", reason="PettingZoo MPE needs the 'pettingzoo' extra (mpe2)")

from conftest import compose_config  # noqa: E402
from torchrl.envs import ParallelEnv, check_env_specs  # noqa: E402

from resq_torchrl.envs.pettingzoo import (  # noqa: E402
    PadHeterogeneousAgents,
    make_mpe_env,
    make_pettingzoo_env,
)
from resq_torchrl.envs.transforms import FixedActionMask
from resq_torchrl.training.builders import env_dims, make_env  # noqa: E402
from resq_torchrl.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: task -> (agents, obs size, action count, state size), read off mpe2's documented spaces
DIMS = {
    "simple_spread": (3, 18, 5, 54),
    "simple_reference": (2, 21, 50, 42),
    "simple_speaker_listener": (2, 11, 5, 14),  # speaker 3 obs / 3 actions, listener 11 / 5
}
SPEAKER_MASK = torch.tensor([[True, True, True, False, False], [True] * 5])


def make(task: str, n_envs: int = 1, max_steps: int = 5, **cfg):
    return make_pettingzoo_env({"task": task, "max_steps": max_steps, **cfg}, n_envs, "cpu")


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("task", sorted(DIMS))
def test_check_env_specs(task, n_envs):
    env = make(task, n_envs)
    env.set_seed(0)
    check_env_specs(env)
    assert env.batch_size == torch.Size([n_envs])
    env.close()


def test_check_env_specs_parallel_env():
    env = make("simple_speaker_listener", 2, parallel=True)
    assert isinstance(env.base_env, ParallelEnv)
    env.set_seed(0)
    check_env_specs(env)
    # the mask lives outside the worker processes: random actions never pick a padded one
    actions = torch.stack([env.rand_action()["agents", "action"] for _ in range(50)])
    assert (actions[..., 0] < 3).all() and (actions[..., 1] == 4).any()
    env.close()


@pytest.mark.parametrize("task", sorted(DIMS))
def test_vocabulary_keys_and_shapes(task):
    n, obs, n_actions, state = DIMS[task]
    env = make(task, 2)
    env.set_seed(0)
    rollout = env.rollout(3)
    assert rollout["agents", "observation"].shape == (2, 3, n, obs)
    assert rollout["agents", "observation"].dtype == torch.float32
    assert rollout["agents", "action_mask"].shape == (2, 3, n, n_actions)
    assert rollout["agents", "action_mask"].dtype == torch.bool
    assert rollout["agents", "action"].shape == (2, 3, n)
    assert rollout["agents", "action"].dtype == torch.int64
    assert rollout["state"].shape == (2, 3, state)
    for key in ("reward", "done", "terminated", "truncated"):
        assert rollout["next", key].shape == (2, 3, 1)
    assert env.done_keys == ["done", "terminated", "truncated"] and env.reward_keys == ["reward"]
    # per-agent rewards and done flags are dropped, no info entries
    assert set(rollout["next", "agents"].keys()) == {"observation", "action_mask"}
    dims = env_dims(env)
    assert (dims.n_agents, dims.obs_dim, dims.n_actions, dims.state_dim) == DIMS[task]


def test_max_steps_below_one_is_refused():
    """mpe2 truncated every step in silence (VMAS and SMAX refused it already)."""
    with pytest.raises(ValueError, match="max_steps must be >= 1, got 0"):
        make("simple_spread", 1, max_steps=0)


def test_truncation_exactly_at_max_steps_and_reset_after_it():
    env = make_env({"family": "pettingzoo", "task": "simple_spread", "max_steps": 4}, 2, seed=0)
    rollout = env.rollout(9, break_when_any_done=False)
    expected = torch.zeros(9, dtype=torch.bool)
    expected[[3, 7]] = True  # steps 4 and 8 of the env reach max_cycles=4
    for b in range(2):
        assert torch.equal(rollout["next", "truncated"][b, :, 0], expected)
        assert torch.equal(rollout["next", "done"][b, :, 0], expected)
        assert not rollout["next", "terminated"][b].any()
        # the step after the limit starts a new episode: is_init, episode_reward from zero
        assert torch.equal(rollout["is_init"][b, :, 0], torch.arange(9) % 4 == 0)
        reward, episode_reward = (
            rollout["next", "reward"][b, :, 0],
            rollout["next", "episode_reward"][b, :, 0],
        )
        assert torch.allclose(episode_reward[3], reward[:4].sum())
        assert torch.allclose(episode_reward[5], reward[4:6].sum())
        assert not torch.equal(
            rollout["agents", "observation"][b, 4], rollout["next", "agents", "observation"][b, 3]
        )


@pytest.mark.parametrize(
    ("task", "reduction"),
    [
        ("simple_spread", "mean"),
        ("simple_reference", "mean"),
        ("simple_reference", "sum"),
        ("simple_speaker_listener", "mean"),
    ],
)
def test_team_reward_and_observations_match_the_raw_mpe2_env(task, reduction):
    steps, seed = 5, 11
    env = make(task, 1, max_steps=steps, reward_reduction=reduction)
    env.set_seed(seed)
    td = env.reset()
    # torchrl seeds worker 0 with `seed` by a reset; its reset then draws the next episode
    raw = make_mpe_env(task, steps)
    raw.reset(seed=seed)
    raw_obs, _ = raw.reset()
    agents = raw.possible_agents
    n, obs_size, n_actions, _ = DIMS[task]
    gen = torch.Generator().manual_seed(0)
    team_rewards, raw_team_rewards = [], []
    for _ in range(steps):
        padded = np.zeros((n, obs_size), dtype=np.float32)
        for i, agent in enumerate(agents):  # raw observations, zeros after them
            padded[i, : raw_obs[agent].shape[0]] = raw_obs[agent]
        np.testing.assert_allclose(td["agents", "observation"][0].numpy(), padded, rtol=1e-6)
        available = td["agents", "action_mask"][0].float()
        action = torch.multinomial(available, 1, generator=gen).squeeze(-1)
        td["agents", "action"] = action.unsqueeze(0)
        td = env.step(td)
        raw_obs, raw_rewards, _, truncations, _ = raw.step(
            {agent: int(action[i]) for i, agent in enumerate(agents)}
        )
        per_agent = np.array([raw_rewards[agent] for agent in agents])
        raw_team_rewards.append(per_agent.mean() if reduction == "mean" else per_agent.sum())
        team_rewards.append(td["next", "reward"][0, 0].item())
        td = td["next"]
    assert all(truncations.values()) and td["truncated"].all() and not td["terminated"].any()
    np.testing.assert_allclose(team_rewards, raw_team_rewards, rtol=1e-5)
    assert all(r < 0 for r in team_rewards)  # every MPE reward here is a negative distance


def test_speaker_listener_padding_and_masked_action_error():
    env = make("simple_speaker_listener", 2)
    env.set_seed(0)
    rollout = env.rollout(4)
    mask = rollout["next", "agents", "action_mask"]
    assert torch.equal(mask, SPEAKER_MASK.expand(2, 4, 2, 5))
    assert torch.equal(rollout["agents", "action_mask"], mask)
    assert torch.equal(env.full_action_spec["agents", "action"].mask, SPEAKER_MASK.expand(2, 2, 5))
    speaker_obs = rollout["next", "agents", "observation"][..., 0, :]
    assert (speaker_obs[..., 3:] == 0).all() and (speaker_obs[..., :3] != 0).any()
    assert (rollout["next", "agents", "observation"][..., 1, 3:] != 0).any()  # listener unpadded
    actions = torch.stack([env.rand_action()["agents", "action"] for _ in range(100)])
    assert (actions[..., 0] < 3).all() and (actions[..., 0] == 2).any()
    assert (actions[..., 1] == 4).any()

    td = env.reset()
    td["agents", "action"] = torch.tensor([[0, 4], [3, 0]])  # env 1's speaker: padded action 3
    with pytest.raises(ValueError, match="agent 'speaker_0' has 3 actions but was given action 3"):
        env.step(td)
    env.close()


def test_pad_wrapper_spaces_and_mask():
    raw = make_mpe_env("simple_speaker_listener", 5)
    assert isinstance(raw, PadHeterogeneousAgents)
    assert raw.possible_agents == ["speaker_0", "listener_0"]
    assert all(raw.observation_space(a).shape == (11,) for a in raw.possible_agents)
    assert all(raw.action_space(a).n == 5 for a in raw.possible_agents)
    assert torch.equal(raw.action_mask(), SPEAKER_MASK)
    raw.reset(seed=0)
    with pytest.raises(ValueError, match="agent 'listener_0' has 5 actions but was given action 5"):
        raw.step({"speaker_0": 0, "listener_0": 5})
    # homogeneous tasks are left as mpe2 makes them
    assert not isinstance(make_mpe_env("simple_spread", 5), PadHeterogeneousAgents)


def test_set_seed_makes_runs_reproducible():
    def run(seed: int):
        env = make("simple_spread", 2, max_steps=4)
        env.set_seed(seed)
        torch.manual_seed(0)  # rand_action draws from torch's global generator
        rollout = env.rollout(6, break_when_any_done=False)  # crosses a reset
        env.close()
        return rollout

    first, again, other = run(3), run(3), run(4)
    assert torch.equal(first["agents", "action"], again["agents", "action"])
    for key in (("next", "agents", "observation"), ("next", "reward"), ("next", "state")):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["agents", "observation"], other["agents", "observation"])
    # the copies of one batch are seeded apart
    assert not torch.equal(first["agents", "observation"][0], first["agents", "observation"][1])


def test_config_errors():
    with pytest.raises(ValueError, match="unknown mpe2 task 'simple_nothing'"):
        make("simple_nothing")
    with pytest.raises(ValueError, match="max_steps, not max_cycles"):
        make("simple_spread", max_cycles=10)
    with pytest.raises(ValueError, match="needs discrete actions"):
        make("simple_spread", continuous_actions=True)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        make("simple_spread", reward_reduction="max")
    with pytest.raises(ValueError, match="available action per agent"):
        FixedActionMask(torch.tensor([[True, False], [False, False]]))
    # an option of another task (simple_spread's N) was mpe2's TypeError deep inside
    with pytest.raises(ValueError, match=r"'simple_reference' has no option 'N'; .*'local_ratio'"):
        make("simple_reference", N=3)
    # versioned task names work too
    assert make("simple_spread_v3").batch_size == torch.Size([1])


@pytest.mark.parametrize(
    "task", ["simple_tag", "simple_adversary", "simple_push", "simple_crypto", "simple_world_comm"]
)
def test_tasks_with_adversaries_are_refused(task):
    """Both sides in one group would train on the mean of opposing rewards (simple_tag: a
    capture, +10 to each adversary and -10 to the prey, was a team reward of +5)."""
    with pytest.raises(ValueError, match=rf"mpe2 task '{task}' pits adversaries .*simple_spread"):
        make(task)


def test_every_listed_cooperative_task_builds():
    from resq_torchrl.envs.pettingzoo import COOPERATIVE_TASKS

    for task in COOPERATIVE_TASKS:
        assert make(task).rollout(2)["next", "reward"].shape == (1, 2, 1)


def train_config(algorithm: str, env: str, out) -> dict:
    overrides = [
        f"algorithm={algorithm}",
        f"env={env}",
        f"output_dir={out}",
        "progress=false",
        "env.max_steps=5",
        "n_envs=2",
        "rollout_steps=5",
        "episodes_per_batch=2",
        "total_frames=60",
        "batch_episodes=4",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=40",
    ]
    return compose_config("train", *overrides)


@pytest.mark.parametrize(
    ("algorithm", "task"), [("resq", "simple_spread"), ("qmix", "simple_speaker_listener")]
)
def test_training_smoke(algorithm, task, tmp_path):
    cfg = train_config(algorithm, f"pettingzoo/{task}", tmp_path)
    assert cfg["env"]["family"] == "pettingzoo" and cfg["env"]["task"] == task
    final = train(cfg)
    assert final["frames"] >= 60 and final["updates"] > 0 and final["eval/episodes"] == 2
    assert np.isfinite(final["eval/return"]) and final["eval/return"] < 0
    csv = tmp_path / f"{algorithm}_pettingzoo_{task}_seed0" / "scalars" / "train"
    assert (csv / "loss_td.csv").stat().st_size > 0
