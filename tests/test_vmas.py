"""VMAS adapter: vocabulary, truncation by step counter, team reward, stacked state, masks,
and a training smoke run through train()."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("vmas", reason="needs the 'vmas' extra: pip install -e '.[vmas]'")

from conftest import compose_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.envs import VmasEnv  # noqa: E402
from torchrl.envs.utils import MarlGroupMapType, check_env_specs  # noqa: E402

from resq_torchrl.envs.transforms import TeamReward  # noqa: E402
from resq_torchrl.envs.vmas import make_vmas  # noqa: E402
from resq_torchrl.training.builders import env_dims, make_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["balance", "navigation", "transport", "wheel", "give_way", "football"]


def load(task: str) -> dict:
    return OmegaConf.to_container(
        OmegaConf.load(ROOT / "configs" / "env" / "vmas" / f"{task}.yaml")
    )


@pytest.mark.parametrize("task", TASKS)
def test_every_config_builds_an_env_that_passes_check_env_specs(task):
    env = make_env(load(task), n_envs=2, seed=0)
    check_env_specs(env)
    td = env.rollout(3)
    n, a = env_dims(env).n_agents, env_dims(env).n_actions
    assert td["agents", "observation"].shape[:3] == (2, 3, n)
    assert td["agents", "action"].shape == (2, 3, n) and td["agents", "action"].dtype == torch.long
    assert td["agents", "action_mask"].shape == (2, 3, n, a) and td["agents", "action_mask"].all()
    assert td["next", "reward"].shape == (2, 3, 1)
    for key in ("done", "terminated", "truncated"):
        assert td["next", key].shape == (2, 3, 1) and td["next", key].dtype == torch.bool
    # nothing per agent besides the vocabulary (info dropped, per-agent reward reduced)
    assert set(td["next", "agents"].keys(True, True)) == {"observation", "action_mask"}


def test_time_limit_is_truncation_and_episodes_restart():
    env = make_vmas("balance", n_envs=3, max_steps=3, seed=0)
    td = env.rollout(7, break_when_any_done=False)
    truncated = td["next", "truncated"].squeeze(-1)
    expected = torch.tensor([False, False, True, False, False, True, False]).expand(3, 7)
    assert torch.equal(truncated, expected)
    assert torch.equal(td["next", "done"].squeeze(-1), expected)
    assert not td["next", "terminated"].any()  # VMAS's own limit would have said terminated
    assert td["step_count"][:, :, 0].tolist() == [[0, 1, 2, 0, 1, 2, 0]] * 3


def test_state_is_the_stacked_observations():
    env = make_vmas("navigation", n_envs=2, max_steps=10, seed=1)
    td = env.rollout(4)
    assert torch.equal(td["state"], td["agents", "observation"].flatten(-2))
    assert torch.equal(td["next", "state"], td["next", "agents", "observation"].flatten(-2))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_team_reward_reduces_the_raw_vmas_rewards(reduction):
    """Same seed, same actions: the adapter's reward is the mean/sum of VMAS's own."""
    kwargs = {"n_agents": 3, "shared_rew": False}  # individual rewards: mean != any agent's
    raw = VmasEnv(
        "navigation",
        num_envs=2,
        continuous_actions=False,
        categorical_actions=True,
        max_steps=None,
        group_map=MarlGroupMapType.ALL_IN_ONE_GROUP,
        seed=3,
        **kwargs,
    )
    td_raw = raw.reset()
    # VMAS draws resets from torch's global generator, which its seed sets: build and reset
    # the second env after the first so that both start from the same draw
    env = make_vmas("navigation", 2, max_steps=50, reward_reduction=reduction, seed=3, **kwargs)
    td = env.reset()
    assert torch.equal(td["agents", "observation"], td_raw["agents", "observation"])
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        actions = torch.randint(0, 9, (2, 3), generator=gen)
        td_raw["agents", "action"], td["agents", "action"] = actions, actions
        a, td_raw = raw.step_and_maybe_reset(td_raw)
        b, td = env.step_and_maybe_reset(td)
        per_agent = a["next", "agents", "reward"]
        expected = per_agent.mean(-2) if reduction == "mean" else per_agent.sum(-2)
        assert torch.allclose(b["next", "reward"], expected)
        assert torch.equal(b["next", "agents", "observation"], a["next", "agents", "observation"])
    assert not torch.allclose(per_agent[:, 0], per_agent[:, 1])  # the reduction mattered


def test_team_reward_rejects_a_wrong_shape():
    t = TeamReward()
    with pytest.raises(ValueError, match=r"\[\*B, N, 1\]"):
        t._call(TensorDict({("agents", "reward"): torch.zeros(2, 3)}, batch_size=[2]))
    with pytest.raises(KeyError, match="per-agent reward"):
        t._call(TensorDict({}, batch_size=[2]))
    with pytest.raises(ValueError, match="reduction"):
        TeamReward("max")


def test_config_without_scenario_is_a_clear_error():
    with pytest.raises(KeyError, match="scenario"):
        make_env({"family": "vmas", "name": "vmas_x", "max_steps": 5}, n_envs=1)
    # a misspelt scenario was VMAS's AssertionError ten frames deep, without the choices
    cfg = {"family": "vmas", "name": "vmas_x", "scenario": "balanse", "max_steps": 5}
    with pytest.raises(
        ValueError, match=r"unknown VMAS scenario 'balanse'; choose one of .*'balance'"
    ):
        make_env(cfg, n_envs=1)


def test_resq_trains_on_vmas_balance(tmp_path):
    from resq_torchrl.training.trainer import train

    overrides = [
        "algorithm=resq",
        "env=vmas/balance",
        "env.max_steps=10",
        f"output_dir={tmp_path}",
        "progress=false",
        "n_envs=4",
        "rollout_steps=5",
        "episodes_per_batch=4",
        "batch_episodes=4",
        "total_frames=200",
        "eval_episodes=2",
        "eval_interval=100",
        "checkpoint_interval=100",
    ]
    cfg = compose_config("train", *overrides)
    final = train(cfg)
    assert final["updates"] > 0 and torch.isfinite(torch.tensor(final["eval/return"]))
    scalars = tmp_path / "resq_vmas_balance_seed0" / "scalars" / "train"
    assert (scalars / "w_r_mean.csv").stat().st_size > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_everything_stays_on_cuda():
    from resq_torchrl.training.builders import make_loss
    from resq_torchrl.training.trainer import make_policies

    env = make_env(load("balance"), n_envs=64, device="cuda", seed=0)
    loss = make_loss({"name": "resq"}, {"type": "mlp"}, env_dims(env), "cuda")
    policy, _ = make_policies(loss, env, {"eps_init": 1, "eps_end": 0.05, "anneal_frames": 10})
    td = env.rollout(5, policy)
    for key, value in td.items(True, True):
        assert value.device.type == "cuda", key


def test_train_script_selects_the_env_by_family_and_task(tmp_path, run_script):
    """``scripts/train.py env=vmas/balance`` from the command line, as a user runs it."""
    proc = run_script(
        "train.py",
        "algorithm=qmix",
        "env=vmas/balance",
        "env.max_steps=10",
        "n_envs=4",
        "rollout_steps=5",
        "episodes_per_batch=4",
        "batch_episodes=4",
        "total_frames=120",
        "eval_episodes=2",
        "eval_interval=1000",
        "progress=false",
        f"output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "final evaluation (qmix on vmas_balance, seed 0)" in proc.stdout
    assert (tmp_path / "final.json").exists()


#: balance observation entries that are velocities (agent, package, line, line angular)
BALANCE_VELOCITIES = [2, 3, 10, 11, 12, 13, 14]


def test_partial_reset_resets_only_the_masked_envs():
    """Proves a "_reset" mask [T, F, T, F] resets envs 0 and 2 and only them: each masked
    env gets a fresh start (step count 0, a new observation, every velocity at rest), each
    unmasked env keeps its step count and observation unchanged."""
    env = make_vmas("balance", n_envs=4, max_steps=100, seed=0)
    td = env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        td["agents", "action"] = torch.randint(0, 9, (4, 3), generator=gen)
        _, td = env.step_and_maybe_reset(td)
    before = td["agents", "observation"].clone()
    assert (before[..., BALANCE_VELOCITIES] != 0).any(-1).any(-1).all()  # all 4 in motion
    mask = [True, False, True, False]
    out = env.reset(td.clone().set("_reset", torch.tensor(mask).unsqueeze(-1)))
    after = out["agents", "observation"]
    assert out["step_count"].flatten().tolist() == [0, 3, 0, 3]
    for i, masked in enumerate(mask):
        if masked:
            assert not torch.equal(after[i], before[i]), i
            assert (after[i][..., BALANCE_VELOCITIES] == 0).all(), i
        else:
            assert torch.equal(after[i], before[i]), i


def test_each_env_draws_from_its_own_random_stream():
    """VMAS shares one generator among all its envs: an evaluation env built with seed 8
    re-seeded the training env of seed 7, and its rollouts moved the training env's episodes.
    Property: an env's rollouts depend on its own seed only."""

    def rollout(env):
        # actions from a generator of their own: only VMAS's draws (the resets) vary
        gen = torch.Generator().manual_seed(0)
        n = env.batch_size[0]

        def policy(td):
            return td.set(("agents", "action"), torch.randint(0, 9, (n, 3), generator=gen))

        return env.rollout(6, policy, break_when_any_done=False)["agents", "observation"]

    env = make_vmas("balance", n_envs=2, max_steps=3, seed=7, n_agents=3)
    alone = [rollout(env), rollout(env)]
    env = make_vmas("balance", n_envs=2, max_steps=3, seed=7, n_agents=3)
    # built after it with another seed: re-seeded VMAS's shared stream
    other = make_vmas("balance", n_envs=3, max_steps=2, seed=8, n_agents=3)
    first = rollout(env)
    rollout(other)  # draws between the two
    second = rollout(env)
    assert torch.equal(first, alone[0]) and torch.equal(second, alone[1])
    reseeded = rollout(make_vmas("balance", n_envs=2, max_steps=3, seed=8, n_agents=3))
    assert not torch.equal(reseeded, alone[0])  # the seed does matter


def test_a_step_that_terminates_at_the_limit_is_not_truncated():
    """``StepCounter`` marks the limit ``truncated`` even where the scenario terminated at
    that step; the library's envs report such a step as a termination only."""
    cfg = {"family": "vmas", "scenario": "balance", "max_steps": 30}
    env = make_env({**cfg, "scenario_kwargs": {"n_agents": 3}}, 8, "cpu", seed=1)
    torch.manual_seed(0)  # random actions: one env terminates at its 30th step
    td = env.rollout(60, break_when_any_done=False)
    terminated, truncated = td["next", "terminated"], td["next", "truncated"]
    at_limit = td["step_count"] == 29
    assert (terminated & at_limit).any()  # the case occurs in this rollout
    assert not (terminated & truncated).any()
    assert torch.equal(td["next", "done"], terminated | truncated)
    assert torch.equal(truncated, at_limit & ~terminated)


def test_truncation_transform_by_hand():
    from resq_torchrl.envs.transforms import TruncationOnlyIfNotTerminated

    t = torch.tensor([[True], [True], [False], [False]])
    next_td = TensorDict(
        {"terminated": t, "truncated": torch.tensor([[True], [False], [True], [False]])}, [4]
    )
    out = TruncationOnlyIfNotTerminated()._call(next_td)
    assert out["truncated"].squeeze(-1).tolist() == [False, False, True, False]
    assert torch.equal(out["terminated"], t)
