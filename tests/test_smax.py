"""SMAX adapter: vocabulary, truncation vs termination, win flag and returns on scripted
battles, dead allies' masks, resets inside the jitted step, action checks, training smoke."""

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("jaxmarl", reason="needs the 'smax' extra: pip install -e '.[smax]'")

from conftest import compose_config  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

from resq_torchrl.envs.smax import STOP_ACTION, SMAXEnv  # noqa: E402
from resq_torchrl.training.builders import env_dims, make_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: ``configs/env/smax/3m.yaml``'s constructor arguments: tests that build this env with
#: 2 copies share one compiled step with ``make_env`` of the config (each distinct
#: configuration and batch size costs its own JAX compilation, ~20 s on 2 cores)
SMAX_3M = {
    "max_steps": 100,
    "enemy_shoots": True,
    "attack_mode": "closest",
    "won_battle_bonus": 1.0,
}


def attack_or_stop(td) -> torch.Tensor:
    """Scripted allies: attack the first enemy in range, else stop."""
    mask = td["agents", "action_mask"]
    attack = mask[..., STOP_ACTION + 1 :]
    first = attack.float().argmax(-1) + STOP_ACTION + 1
    return torch.where(attack.any(-1), first, torch.full_like(first, STOP_ACTION))


def play(env: SMAXEnv, policy, steps: int):
    """Steps ``env`` with ``policy`` (a function of the root td) as torchrl's rollout does."""
    td, out = env.reset(), []
    for _ in range(steps):
        td["agents", "action"] = policy(td)
        stepped, td = env.step_and_maybe_reset(td)
        out.append(stepped.exclude("next").update({"next": stepped["next"]}))
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("map_name", ["3m", "5m_vs_6m"])
def test_specs_and_vocabulary(map_name):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / f"configs/env/smax/{map_name}.yaml"))
    env = make_env(cfg, n_envs=2, seed=0)
    check_env_specs(env)
    dims = env_dims(env)
    n_enemies = {"3m": 3, "2s3z": 5, "5m_vs_6m": 6}[map_name]
    assert dims.n_actions == 5 + n_enemies
    td = env.rollout(4)
    assert td["agents", "observation"].shape == (2, 4, dims.n_agents, dims.obs_dim)
    assert td["agents", "action_mask"].dtype == torch.bool
    assert td["state"].shape == (2, 4, dims.state_dim)
    for key in ("reward", "done", "terminated", "truncated", "battle_won"):
        assert td["next", key].shape == (2, 4, 1)
    # random actions come from the spec's mask: never an unavailable one
    taken = td["agents", "action_mask"].gather(-1, td["agents", "action"].unsqueeze(-1))
    assert taken.all()


def test_time_limit_is_truncation_not_termination():
    """Nobody shoots (allies stop, enemies do not shoot): the limit ends each episode after
    exactly ``max_steps`` steps as a truncation, with zero reward and no win."""
    env = SMAXEnv("3m", batch_size=[3], max_steps=3, enemy_shoots=False)  # as the test below
    compiled = env._step_all._cache_size()  # 0, or 1 if the test below ran first
    td = play(env, lambda td: torch.full((3, 3), STOP_ACTION), 7)
    # the step compiles at most once for these shapes: the reset's state has the step's
    # types and placement (a weakly typed or committed field would compile it again)
    assert env._step_all._cache_size() <= compiled + 1
    expected = torch.tensor([False, False, True] * 2 + [False]).expand(3, 7)
    assert torch.equal(td["next", "truncated"].squeeze(-1), expected)
    assert torch.equal(td["next", "done"].squeeze(-1), expected)
    assert not td["next", "terminated"].any() and not td["next", "battle_won"].any()
    assert td["next", "reward"].abs().max() == 0
    assert td["step_count"][0, :, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_a_won_battle_terminates_with_the_win_flag_and_return_two():
    """Enemies that do not shoot lose to allies that attack. SMAX's return of a won battle
    is 1 (every enemy's health, normalised, summed over the team) + won_battle_bonus 1."""
    env = SMAXEnv("3m", batch_size=[4], max_steps=100, enemy_shoots=False, seed=1)
    td = play(env, attack_or_stop, 100)
    done = td["next", "done"].squeeze(-1)
    assert done.any(-1).all(), "every battle ends within 100 steps"
    first_end = done.float().argmax(-1)
    for b in range(4):
        t = int(first_end[b])
        assert td["next", "terminated"][b, t] and not td["next", "truncated"][b, t]
        assert td["next", "battle_won"][b, t]
        assert not td["next", "battle_won"][b, :t].any()
        ret = td["next", "reward"][b, : t + 1].sum()
        assert ret == pytest.approx(2.0, abs=1e-4)


def test_a_lost_battle_terminates_without_win_and_dead_allies_may_only_stop():
    env = SMAXEnv("3m", batch_size=[2], seed=0, **SMAX_3M)
    td = play(env, lambda td: torch.full((2, 3), STOP_ACTION), 100)
    done = td["next", "done"].squeeze(-1)
    assert done.any(-1).all(), "allies that never shoot die within 100 steps"
    t = int(done[0].float().argmax())
    assert td["next", "terminated"][0, t] and not td["next", "battle_won"][0, t]
    assert td["next", "reward"][0, : t + 1].sum() == pytest.approx(0.0, abs=1e-6)
    # at the end every ally is dead: its mask allows the stop action only
    only_stop = torch.zeros(8, dtype=torch.bool)
    only_stop[STOP_ACTION] = True
    final_mask = td["next", "agents", "action_mask"][0, t]
    assert torch.equal(final_mask, only_stop.expand(3, 8))


def test_finished_envs_start_fresh_and_a_partial_reset_resets_only_the_masked_envs():
    env = SMAXEnv("3m", batch_size=[3], max_steps=3, enemy_shoots=False)
    td = env.reset()
    for _ in range(2):
        td["agents", "action"] = torch.full((3, 3), STOP_ACTION)
        _, td = env.step_and_maybe_reset(td)
    assert td["step_count"].flatten().tolist() == [2, 2, 2]
    reset = torch.tensor([[True], [False], [True]])
    out = env.reset(td.clone().set("_reset", reset))
    assert out["step_count"].flatten().tolist() == [0, 2, 0]
    # env 1 kept its episode: one more step ends it at the limit
    out["agents", "action"] = torch.full((3, 3), STOP_ACTION)
    stepped, nxt = env.step_and_maybe_reset(out)
    assert stepped["next", "truncated"].flatten().tolist() == [False, True, False]
    assert nxt["step_count"].flatten().tolist() == [1, 0, 1]  # env 1 was reset in the step


def test_same_seed_same_battles():
    def run(seed):
        env = SMAXEnv("2s3z", batch_size=[2], max_steps=20)
        env.set_seed(seed)
        return play(env, attack_or_stop, 15)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["agents", "observation"], b["agents", "observation"])
    assert torch.equal(a["next", "reward"], b["next", "reward"])
    assert not torch.equal(a["agents", "observation"], c["agents", "observation"])


def test_bad_actions_and_arguments_are_clear_errors():
    env = SMAXEnv("3m", batch_size=[2], **SMAX_3M)
    td = env.reset()
    mask = td["agents", "action_mask"]
    unavailable = (~mask[1, 2]).nonzero()[0].item()
    td["agents", "action"] = torch.full((2, 3), STOP_ACTION)
    td["agents", "action"][1, 2] = unavailable
    with pytest.raises(ValueError, match=rf"env 1, agent 2: action {unavailable} is not"):
        env.step(td)
    td["agents", "action"] = torch.full((2, 3), 99)
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        env.step(td)
    two_agents = TensorDict({("agents", "action"): torch.zeros(2, 2, dtype=torch.long)}, [2])
    with pytest.raises(ValueError, match=r"must be \[2, 3\]"):
        env.step(two_agents)
    with pytest.raises(ValueError, match=r"unknown SMAX map '4m_vs_nothing'; choose one of .*'3m'"):
        SMAXEnv("4m_vs_nothing")
    with pytest.raises(ValueError, match="max_steps"):
        SMAXEnv("3m", max_steps=0)


def test_a_restored_simulator_state_restores_the_wrappers_action_mask():
    """``make_smax_env``'s ``ActionMask`` keeps its own copy of the mask: restored through
    ``load_env_state``, the copy is the restored step's, so random actions drawn from the
    wrapper's spec are available ones (they were drawn from the mask before the restore)."""
    from resq_torchrl.training.checkpoint import env_state, load_env_state

    cfg = {"name": "smax_3m", "family": "smax", "map_name": "3m", **SMAX_3M}
    env = make_env(cfg, 2, seed=0)
    start = env.reset()
    saved = env_state(env)
    env.rollout(25, auto_reset=False, tensordict=start.clone(), break_when_any_done=False)
    spec = env.full_action_spec["agents", "action"]
    assert not torch.equal(spec.mask, start["agents", "action_mask"])  # the case at hand
    load_env_state(env, saved)
    assert torch.equal(
        env.full_action_spec["agents", "action"].mask, start["agents", "action_mask"]
    )
    for _ in range(20):
        action = env.rand_action(start.clone())["agents", "action"]
        assert start["agents", "action_mask"].gather(-1, action.unsqueeze(-1)).all()


def test_resq_trains_on_smax_and_reports_a_win_rate(tmp_path):
    from resq_torchrl.training.trainer import train

    overrides = [
        "algorithm=resq",
        "env=smax/3m",
        "env.max_steps=20",
        f"output_dir={tmp_path}",
        "progress=false",
        "n_envs=4",
        "rollout_steps=10",
        "episodes_per_batch=4",
        "batch_episodes=4",
        "total_frames=240",
        "eval_episodes=4",
        "eval_interval=120",
        "checkpoint_interval=120",
    ]
    cfg = compose_config("train", *overrides)
    final = train(cfg)
    assert final["updates"] > 0
    wins = final["eval/win_rate"] * 4  # a share of the 4 greedy episodes
    assert 0 <= wins <= 4 and abs(wins - round(wins)) < 1e-6
    assert torch.isfinite(torch.tensor(final["eval/return"]))


def test_state_is_smax_world_state_scaled_to_the_unit_interval():
    """Proves the state is SMAX's world_state scaled entry by entry: per unit health
    fraction and one-hot type unchanged, x and y divided by the map size (32), the weapon
    cooldown divided by the largest unit-type cooldown and clipped to [0, 1] (SMAX's
    cooldowns run below zero), then teams unchanged and type indices divided by the number
    of type bits. Checked against the raw state at reset, and after 6 steps of attacks
    against the scaling computed by hand from the JAX battle state."""
    # max_steps=20 as test_same_seed_same_battles: the scaled env shares its compiled reset
    # and step
    raw = SMAXEnv("2s3z", batch_size=[2], max_steps=20, normalize_state=False, seed=3)
    scaled = SMAXEnv("2s3z", batch_size=[2], max_steps=20, seed=3)
    smax = raw.smax
    a, b = raw.reset()["state"], scaled.reset()["state"]
    units = smax.num_allies + smax.num_enemies
    n_own = len(smax.own_features)
    a_units = a[:, : units * n_own].reshape(2, units, n_own)
    b_units = b[:, : units * n_own].reshape(2, units, n_own)
    assert torch.allclose(b_units[..., 1], a_units[..., 1] / 32)  # x / map width
    assert torch.allclose(b_units[..., 2], a_units[..., 2] / 32)  # y / map height
    assert torch.equal(b_units[..., 0], a_units[..., 0])  # health fraction unchanged
    assert torch.equal(b_units[..., 4:], a_units[..., 4:])  # one-hot type unchanged
    tail = units * n_own
    assert torch.equal(b[:, tail : tail + units], a[:, tail : tail + units])  # teams
    assert torch.allclose(b[:, -units:], a[:, -units:] / smax.unit_type_bits)  # type index
    stalker_zealot = torch.tensor([2 / 6, 3 / 6])  # type indices 2 and 3, 6 type bits
    torch.testing.assert_close(b[:, -units:].unique(), stalker_zealot)
    assert a_units[..., 1].max() > 1  # the raw state is not in [0, 1]

    td = scaled.reset()
    for _ in range(6):
        td["agents", "action"] = attack_or_stop(td)
        _, td = scaled.step_and_maybe_reset(td)
    battle = scaled._state.state  # the JAX state of td's observation
    alive = torch.tensor(np.asarray(battle.unit_alive))
    types = torch.tensor(np.asarray(battle.unit_types)).long()
    cooldown = torch.tensor(np.asarray(battle.unit_weapon_cooldowns))
    expected = torch.zeros(2, units, n_own)
    health = torch.tensor(np.asarray(smax.unit_type_health))[types]
    expected[..., 0] = torch.tensor(np.asarray(battle.unit_health)) / health
    expected[..., 1:3] = torch.tensor(np.asarray(battle.unit_positions)) / 32
    largest = float(np.max(np.asarray(smax.unit_type_weapon_cooldowns)))
    expected[..., 3] = (cooldown / largest).clamp(0, 1)
    expected[..., 4:] = torch.nn.functional.one_hot(types, n_own - 4).float()
    expected *= alive.unsqueeze(-1)  # SMAX zeroes a dead unit's features
    teams = torch.tensor(np.asarray(battle.unit_teams)).float()
    expected = torch.cat([expected.view(2, -1), teams, types.float() / smax.unit_type_bits], dim=-1)
    torch.testing.assert_close(td["state"], expected)
    scaled_cooldown = td["state"][:, :tail].reshape(2, units, n_own)[..., 3]
    assert ((scaled_cooldown > 0) & (scaled_cooldown < 1)).any()  # weapons reloading
    assert (cooldown < 0).any()  # ready weapons: clipped to 0
