"""SMAC v1 and SMACv2 adapters (resq_torchrl.envs.smac / .smacv2).

StarCraft II cannot run in CI, so the adapters are tested on stand-ins for the games: small
scripted classes that implement only the methods the adapters call, with SMAC's conventions
(action 0 is the no-op, the only action of a dead agent; actions 6 + j attack enemy j; the
step returns ``(reward, terminated, info)`` and reports a time limit in
``info["episode_limit"]`` only under ``continuing_episode=True``). The tests at the end run the
real games and skip without StarCraft II (``SC2PATH``) and the packages from git.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.envs import ActionMask, ParallelEnv, SerialEnv
from torchrl.envs.utils import check_env_specs

from resq_torchrl.envs.smac import SMACEnv, make_smac_env
from resq_torchrl.envs.smacv2 import SMACv2TeamEnv, make_smacv2_env

ROOT = Path(__file__).resolve().parent.parent
STOP, ATTACK_0, ATTACK_1 = 1, 6, 7  # SMAC's action indices with two enemies
MASK = ("agents", "action_mask")
FLAGS = ("terminated", "truncated", "done", "battle_won")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


class StandInStarCraft2Env:
    """Stand-in for ``smac.env.StarCraft2Env``: implements only the ``MultiAgentEnv`` methods
    the adapter calls, on a scripted battle.

    ``n_agents`` allies face ``n_enemies`` enemies of ``enemy_health`` hit points. Actions:
    0 no-op (dead agents only), 1 stop, 2-5 moves (no effect), ``6 + j`` attack enemy ``j``
    (available while it is alive). Each attack on a live enemy removes one hit point and adds
    1 to the reward. Allies die at the steps of ``ally_deaths`` (``{step: [agent, ...]}``).
    The battle is won (reward + 10) when every enemy is dead, lost when every ally is; else
    the step reaching ``episode_limit`` ends the episode (flagged in the info only with
    ``continuing_episode``). ``no_action_agent`` gets an all-zero availability row.
    Observation of a live agent: ``[alive, t / limit, enemy health fractions...]`` (zeros when
    dead); state: ``[ally alive..., enemy health fractions..., t / limit]``.
    """

    def __init__(
        self,
        map_name="standin",
        seed=None,
        continuing_episode=False,
        n_agents=3,
        n_enemies=2,
        enemy_health=2,
        episode_limit=5,
        ally_deaths=None,
        no_action_agent=None,
        **other_sc2_kwargs,
    ):
        self.map_name, self._seed = map_name, seed
        self.continuing_episode = continuing_episode
        self.n_agents, self.n_enemies, self.enemy_health = n_agents, n_enemies, enemy_health
        self.n_actions = 6 + n_enemies
        self.episode_limit = episode_limit
        self.ally_deaths = ally_deaths or {}
        self.no_action_agent = no_action_agent
        self.other_sc2_kwargs = other_sc2_kwargs
        self.closed = False
        self.steps_taken = 0  # over the game's life, to see that rejected actions never arrive

    def seed(self):
        return self._seed

    def get_obs_size(self):
        return 2 + self.n_enemies

    def get_state_size(self):
        return self.n_agents + self.n_enemies + 1

    def get_env_info(self):
        return {
            "state_shape": self.get_state_size(),
            "obs_shape": self.get_obs_size(),
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def reset(self):
        self.t = 0
        self.alive = np.ones(self.n_agents, dtype=bool)
        self.health = np.full(self.n_enemies, self.enemy_health)
        return self.get_obs(), self.get_state()

    def get_avail_agent_actions(self, agent):
        if agent == self.no_action_agent:
            return [0] * self.n_actions
        if not self.alive[agent]:
            return [1] + [0] * (self.n_actions - 1)
        return [0, 1, 1, 1, 1, 1] + [int(h > 0) for h in self.health]

    def get_avail_actions(self):
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def get_obs(self):
        enemies = self.health / self.enemy_health
        return [
            np.array([1.0, self.t / self.episode_limit, *enemies], dtype=np.float32) * self.alive[i]
            for i in range(self.n_agents)
        ]

    def get_state(self):
        enemies = self.health / self.enemy_health
        state = [*self.alive, *enemies, self.t / self.episode_limit]
        return np.array(state, dtype=np.float32)

    def step(self, actions):
        for agent, action in enumerate(actions):
            avail = self.get_avail_agent_actions(agent)[action]
            assert avail == 1, f"Agent {agent} cannot perform action {action}"
        self.steps_taken += 1
        reward = 0.0
        for action in actions:
            if action >= 6 and self.health[action - 6] > 0:
                self.health[action - 6] -= 1
                reward += 1.0
        self.t += 1
        for agent in self.ally_deaths.get(self.t, []):
            self.alive[agent] = False
        info = {
            "battle_won": False,
            "dead_allies": int((~self.alive).sum()),
            "dead_enemies": int((self.health == 0).sum()),
        }
        if not self.health.any():
            info["battle_won"] = True
            return reward + 10.0, True, info
        if not self.alive.any():
            return reward, True, info
        if self.t >= self.episode_limit:
            if self.continuing_episode:
                info["episode_limit"] = True
            return reward, True, info
        return reward, False, info

    def close(self):
        self.closed = True


def standin(**script):
    """A picklable factory of stand-in games with ``script`` (``ally_deaths``, ...)."""
    return functools.partial(StandInStarCraft2Env, **script)


def last_available(td):
    """Scripted policy: every agent takes its highest available action (attack the last live
    enemy; the no-op when dead)."""
    mask = td.get(("agents", "action_mask"))
    index = torch.arange(mask.shape[-1], device=mask.device)
    td.set(("agents", "action"), (mask.long() * index).argmax(-1))
    return td


def flags(td):
    """``[terminated, truncated, done, battle_won]`` of one game's step output."""
    return [bool(td[k].item()) for k in FLAGS]


def act(env, td, actions):
    td = td.clone()
    td.set(("agents", "action"), torch.tensor(actions))
    return env.step(td)


# ----------------------------------------------------------------------------- SMAC v1


def test_specs_of_one_game_and_of_the_batched_env():
    env = SMACEnv("3m", sc2_env_factory=standin(ally_deaths={2: [1]}))
    assert env.batch_size == torch.Size([])
    assert env.observation_spec["agents", "observation"].shape == (3, 4)
    assert env.observation_spec["agents", "action_mask"].shape == (3, 8)
    assert env.observation_spec["state"].shape == (6,)
    assert env.full_action_spec["agents", "action"].space.n == 8
    assert env.observation_spec["battle_won"].dtype == torch.bool
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    check_env_specs(env, seed=0)  # random actions follow the mask the env keeps on its spec

    batched = make_smac_env(
        {"max_steps": 5, "parallel": False}, 2, "cpu", sc2_env_factory=standin()
    )
    assert isinstance(batched.base_env, SerialEnv) and batched.batch_size == torch.Size([2])
    # the batched env's own rand_action ignores the copies' masks: make_smac_env adds
    # torchrl's ActionMask, so random actions stay valid
    assert isinstance(batched.transform, ActionMask)
    check_env_specs(batched, seed=0)
    batched.close()


def test_mask_and_observations_pass_through_and_a_dead_agent_only_has_the_no_op():
    env = SMACEnv(sc2_env_factory=standin(ally_deaths={1: [1]}))
    td = env.reset()
    alive = [0, 1, 1, 1, 1, 1, 1, 1]
    assert td[MASK].tolist() == [[bool(a) for a in alive]] * 3
    assert td["agents", "observation"][0].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert td["state"].tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    nxt = act(env, td, [ATTACK_0, STOP, STOP])["next"]
    dead = [True] + [False] * 7
    assert nxt[MASK][1].tolist() == dead  # agent 1 died at step 1
    assert nxt[MASK][0].tolist() == [bool(a) for a in alive]
    assert nxt["agents", "observation"][1].tolist() == [0.0] * 4
    # float32, as SMAC gives them: t = 1/5, enemy 0 at half health
    assert torch.equal(nxt["agents", "observation"][0], torch.tensor([1.0, 0.2, 0.5, 1.0]))
    assert torch.equal(nxt["state"], torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 0.2]))
    assert nxt["reward"].tolist() == [1.0]


def test_a_won_battle_is_terminated_with_battle_won_and_its_rewards():
    env = SMACEnv(sc2_env_factory=standin())
    td = env.reset()
    out = act(env, td, [ATTACK_0, ATTACK_0, ATTACK_0])  # 2 hp: the third attack finds it dead
    nxt = out["next"]
    assert nxt["reward"].item() == 2.0
    assert not nxt["done"].item() and not nxt["battle_won"].item()
    nxt = act(env, nxt, [ATTACK_1, ATTACK_1, STOP])["next"]  # enemy 1 dies: won
    assert nxt["reward"].item() == 12.0  # 2 hits + the win's 10
    assert flags(nxt) == [True, False, True, True]


def test_the_episode_limit_is_truncated_and_a_defeat_terminated():
    env = SMACEnv(sc2_env_factory=standin(episode_limit=3))
    td = env.reset()
    seen = []
    for _ in range(3):
        td = act(env, td, [STOP] * 3)["next"]
        seen.append(flags(td))
    assert seen == [[False] * 4, [False] * 4, [False, True, True, False]]
    assert env.sc2_env.continuing_episode is True  # the adapter asks SMAC for the flag

    env = SMACEnv(sc2_env_factory=standin(ally_deaths={2: [0, 1, 2]}))
    td = act(env, env.reset(), [STOP] * 3)["next"]
    td = act(env, td, [STOP] * 3)["next"]
    assert flags(td) == [True, False, True, False]  # every ally dead at step 2: lost


def test_a_battle_ending_at_the_limit_is_terminated_not_truncated():
    """SMAC checks the battle before the limit: a win on the last step is a termination."""
    env = SMACEnv(sc2_env_factory=standin(episode_limit=2))
    td = act(env, env.reset(), [ATTACK_0, ATTACK_0, STOP])["next"]
    td = act(env, td, [ATTACK_1, ATTACK_1, STOP])["next"]
    assert flags(td) == [True, False, True, True]


def test_unavailable_actions_are_rejected_before_the_game_sees_them():
    env = SMACEnv(sc2_env_factory=standin(ally_deaths={1: [1]}))
    td = env.reset()
    with pytest.raises(
        ValueError, match=r"agent 0 cannot take action 0: .* \[1, 2, 3, 4, 5, 6, 7\]"
    ):
        act(env, td, [0, STOP, STOP])  # the no-op is for dead agents only
    with pytest.raises(ValueError, match=r"agent 2: action 8 is not in \[0, 8\)"):
        act(env, td, [STOP, STOP, 8])
    td = act(env, td, [STOP, STOP, STOP])["next"]  # agent 1 dies
    with pytest.raises(
        ValueError, match=r"agent 1 cannot take action 1: .* \[0\] \(agent 1 is dead"
    ):
        act(env, td, [STOP, STOP, STOP])
    assert env.sc2_env.steps_taken == 1  # only the valid step reached the game
    act(env, td, [STOP, 0, STOP])
    assert env.sc2_env.steps_taken == 2


def test_an_agent_without_any_available_action_is_an_error():
    env = SMACEnv(sc2_env_factory=standin(no_action_agent=2))
    with pytest.raises(ValueError, match="agent 2 has no available action"):
        env.reset()


def test_set_seed_rebuilds_the_game_with_the_seed_and_close_closes_it():
    env = SMACEnv("3m", seed=3, sc2_env_factory=standin(), difficulty="7")
    first = env.sc2_env
    assert first.seed() == 3 and first.other_sc2_kwargs == {"difficulty": "7"}
    env.set_seed(2**32 + 5)
    assert first.closed and env.sc2_env is not first
    assert env.sc2_env.seed() == 5  # StarCraft II takes a uint32
    assert env.sc2_env.map_name == "3m" and env.sc2_env.continuing_episode
    with pytest.raises(RuntimeError, match="reset the env before stepping"):
        env.step(TensorDict({("agents", "action"): torch.ones(3, dtype=torch.long)}))
    env.reset()
    second = env.sc2_env
    env.close()
    assert second.closed and env.is_closed


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="continuing_episode=False hides"):
        SMACEnv(sc2_env_factory=standin(), continuing_episode=False)
    with pytest.raises(ValueError, match=r"max_steps=60 but SMAC map 'x' has episode limit 5"):
        make_smac_env({"map_name": "x", "max_steps": 60}, 1, "cpu", sc2_env_factory=standin())


@pytest.mark.skipif(_importable("smac.env"), reason="oxwhirl/smac is installed")
def test_missing_smac_says_how_to_install_it():
    with pytest.raises(ImportError, match="pip install git\\+https://github.com/oxwhirl/smac.git"):
        SMACEnv("3m")


ON_CUDA = pytest.param(
    False, "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
)


@pytest.mark.parametrize(("parallel", "device"), [(False, "cpu"), (True, "cpu"), ON_CUDA])
def test_batched_copies_through_make_smac_env(parallel, device):
    """Two copies under the scripted policy: attack enemy 1 (2 hits), then enemy 0 (2 hits,
    won, + 10); each copy resets after its win. The games run on CPU, the output is on
    ``device``."""
    env = make_smac_env(
        {
            "family": "smac",
            "name": "smac_x",
            "max_steps": 5,
            "win_key": "battle_won",
            "parallel": parallel,
        },
        2,
        device,
        sc2_env_factory=standin(),
    )
    assert isinstance(env.base_env, ParallelEnv if parallel else SerialEnv)
    env.set_seed(0)
    td = env.rollout(5, last_available, break_when_any_done=False)
    env.close()
    assert td.batch_size == torch.Size([2, 5]) and td["next", "reward"].device.type == device
    assert td["agents", "observation"].shape == (2, 5, 3, 4)
    assert td[MASK].shape == (2, 5, 3, 8) and td["state"].shape == (2, 5, 6)
    assert td["agents", "action"][0, :2].tolist() == [[ATTACK_1] * 3, [ATTACK_0] * 3]
    reward = [[2.0, 12.0, 2.0, 12.0, 2.0]] * 2
    won = [[False, True, False, True, False]] * 2
    assert td["next", "reward"].squeeze(-1).tolist() == reward
    assert td["next", "battle_won"].squeeze(-1).tolist() == won
    assert td["next", "terminated"].squeeze(-1).tolist() == won
    assert not td["next", "truncated"].any()


def train_config(env: str, out: Path, *extra: str) -> dict:
    overrides = [
        "algorithm=resq",
        f"env={env}",
        f"output_dir={out}",
        "progress=false",
        "n_envs=2",
        "rollout_steps=5",
        "episodes_per_batch=2",
        "batch_episodes=4",
        "eval_episodes=2",
        "eval_interval=40",
        "checkpoint_interval=40",
        "total_frames=100",
        *extra,
    ]
    return compose_config("train", *overrides)


@pytest.mark.parametrize("parallel", ["false", "true"])
def test_resq_trains_on_the_stand_in_through_the_smac_config(parallel, tmp_path, monkeypatch):
    from resq_torchrl.training import builders
    from resq_torchrl.training.trainer import train

    def build(env_cfg, n_envs, device):
        return make_smac_env(env_cfg, n_envs, device, sc2_env_factory=standin(episode_limit=5))

    monkeypatch.setitem(builders.ENV_BUILDERS, "smac", build)
    final = train(train_config("smac/3m", tmp_path, "env.max_steps=5", f"env.parallel={parallel}"))
    assert final["frames"] > 0 and final["updates"] > 0
    assert 0.0 <= final["eval/win_rate"] <= 1.0 and final["eval/episodes"] == 2
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert all("eval/win_rate" in e for e in evals)
    assert (tmp_path / "resq_smac_3m_seed0" / "scalars" / "train" / "loss_td.csv").exists()


#: episode limits of oxwhirl/smac's smac_maps.py
SMAC_LIMITS = {
    "3m": 60,
    "8m": 120,
    "2s3z": 120,
    "3s5z": 150,
    "5m_vs_6m": 70,
    "MMM2": 180,
    "3s5z_vs_3s6z": 170,
    "corridor": 400,
    "6h_vs_8z": 150,
    "27m_vs_30m": 180,
}


@pytest.mark.parametrize("map_name", sorted(SMAC_LIMITS))
def test_every_smac_config_names_its_map_and_limit(map_name, tmp_path):
    env = train_config(f"smac/{map_name}", tmp_path)["env"]
    assert env["family"] == "smac" and env["map_name"] == map_name
    assert env["max_steps"] == SMAC_LIMITS[map_name] and env["win_key"] == "battle_won"


# ----------------------------------------------------------------------------- SMACv2


class StandInSMACv2StarCraft2Env(StandInStarCraft2Env):
    """Stand-in for ``smacv2.env.StarCraft2Env``: the stand-in battle, sized by the
    ``capability_config`` (``n_units`` allies, ``n_enemies`` enemies) like the 10gen maps,
    whose episode limit is 200."""

    def __init__(self, capability_config=None, episode_limit=200, **kwargs):
        if capability_config:
            kwargs["n_agents"] = capability_config["n_units"]
            kwargs["n_enemies"] = capability_config["n_enemies"]
        super().__init__(episode_limit=episode_limit, **kwargs)


class StandInCapabilityEnvWrapper:
    """Stand-in for ``smacv2.env.StarCraftCapabilityEnvWrapper``: like the real one, it adds
    keys to each sub-config of the ``capability_config`` it is given and forwards every other
    attribute to the game."""

    def __init__(self, **kwargs):
        config = kwargs["capability_config"]
        for key, sub in config.items():
            if isinstance(sub, dict):
                sub.update(env_key=key, n_units=config["n_units"])
        self.env = StandInSMACv2StarCraft2Env(**kwargs)

    def __getattr__(self, name):
        return getattr(self.env, name)


@pytest.fixture
def fake_smacv2(monkeypatch):
    """Make ``import smacv2.env`` give the stand-ins (torchrl's SMACv2Env checks a flag set
    when torchrl was imported, so that flag is set too)."""
    package = types.ModuleType("smacv2")
    env_module = types.ModuleType("smacv2.env")
    env_module.StarCraft2Env = StandInSMACv2StarCraft2Env
    env_module.StarCraftCapabilityEnvWrapper = StandInCapabilityEnvWrapper
    package.env = env_module
    monkeypatch.setitem(sys.modules, "smacv2", package)
    monkeypatch.setitem(sys.modules, "smacv2.env", env_module)
    monkeypatch.setattr("torchrl.envs.libs.smacv2._has_smacv2", True)


def smacv2_config(scenario: str, **changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/env/smacv2" / f"{scenario}.yaml"))
    cfg.update(changes)
    return cfg


def test_smacv2_specs_and_the_capability_config_reach_the_game(fake_smacv2):
    cfg = smacv2_config("protoss_5_vs_5")
    env = SMACv2TeamEnv(cfg["map_name"], capability_config=cfg["capability_config"])
    game = env._env.env  # torchrl's wrapper -> capability wrapper -> game
    assert game.n_agents == 5 and game.n_enemies == 5 and game.continuing_episode
    assert cfg["capability_config"]["team_gen"].keys() == {
        "dist_type",
        "unit_types",
        "weights",
        "observe",
    }  # the wrapper wrote into a copy
    assert env.observation_spec["agents", "observation"].shape == (5, 7)
    assert env.observation_spec["agents", "action_mask"].shape == (5, 11)
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    check_env_specs(env, seed=0)


def test_smacv2_time_limit_is_truncated_and_a_win_terminated(fake_smacv2):
    env = SMACv2TeamEnv("10gen_terran", episode_limit=2, n_agents=3, n_enemies=2)
    td = act(env, env.reset(), [STOP] * 3)["next"]
    assert not td["done"].item()
    td = act(env, td, [STOP] * 3)["next"]  # torchrl's SMACv2Env calls this terminated
    assert td["truncated"].item() and td["done"].item()
    assert not td["terminated"].item() and not td["battle_won"].item()
    assert td["info", "episode_limit"].item()

    td = act(env, env.reset(), [ATTACK_0, ATTACK_0, STOP])["next"]
    td = act(env, td, [ATTACK_1, ATTACK_1, STOP])["next"]
    assert td["reward"].item() == 12.0
    assert td["terminated"].item() and td["battle_won"].item() and not td["truncated"].item()
    assert td["info", "dead_enemies"].item() == 2


def test_smacv2_rejects_unavailable_actions_and_reseeds(fake_smacv2):
    env = SMACv2TeamEnv("10gen_zerg", seed=1, ally_deaths={1: [0]}, n_agents=3, n_enemies=2)
    td = act(env, env.reset(), [STOP] * 3)["next"]
    with pytest.raises(ValueError, match=r"agent 0 cannot take action 1: .* \(agent 0 is dead"):
        act(env, td, [STOP] * 3)
    first = env._env
    assert first.seed() == 1
    env.set_seed(2**32 + 9)  # torchrl's SMACv2Env refuses set_seed
    assert first.closed and env._env.seed() == 9
    with pytest.raises(RuntimeError, match="reset the env before stepping"):
        act(env, td, [STOP] * 3)


def test_make_smacv2_env_batches_the_config(fake_smacv2):
    env = make_smacv2_env(smacv2_config("zerg_5_vs_5", parallel=False), 2, "cpu")
    assert isinstance(env.base_env, SerialEnv)
    env.set_seed(0)
    td = env.rollout(3, last_available, break_when_any_done=False)
    env.close()
    assert td["agents", "observation"].shape == (2, 3, 5, 7)
    assert td["next", "battle_won"].shape == (2, 3, 1) and td["next", "truncated"].shape == (
        2,
        3,
        1,
    )
    # each step all 5 agents attack the last live enemy: 2 hits kill it, 3 find it dead
    assert td["next", "reward"].squeeze(-1).tolist() == [[2.0, 2.0, 2.0]] * 2
    with pytest.raises(ValueError, match="max_steps=100 but SMACv2 map '10gen_zerg' has"):
        make_smacv2_env(smacv2_config("zerg_5_vs_5", max_steps=100), 1, "cpu")


@pytest.mark.skipif(_importable("smacv2"), reason="smacv2 is installed")
def test_missing_smacv2_says_how_to_install_it():
    with pytest.raises(
        ImportError, match="pip install git\\+https://github.com/oxwhirl/smacv2.git"
    ):
        SMACv2TeamEnv("10gen_protoss")


# ----------------------------------------------------------------------------- real games


needs_smac = pytest.mark.skipif(
    not (os.environ.get("SC2PATH") and _importable("smac.env")),
    reason="needs StarCraft II (SC2PATH) and oxwhirl/smac installed from git",
)
needs_smacv2 = pytest.mark.skipif(
    not (os.environ.get("SC2PATH") and _importable("smacv2.env")),
    reason="needs StarCraft II (SC2PATH) and oxwhirl/smacv2 installed from git",
)


def run_train(tmp_path: Path, env: str, max_steps: int) -> dict:
    """``scripts/train.py`` on one real game for two episodes' worth of frames."""
    args = [
        "algorithm=resq",
        f"env={env}",
        f"total_frames={2 * max_steps}",
        "n_envs=1",
        "eval_episodes=1",
        f"rollout_steps={max_steps}",
        "episodes_per_batch=1",
        "batch_episodes=1",
        "buffer_episodes=10",
        f"eval_interval={10 * max_steps}",
        f"checkpoint_interval={10 * max_steps}",
        f"output_dir={tmp_path}",
        "progress=false",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "RL_WARNINGS": "False"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "final.json").read_text())


@needs_smac
def test_real_smac_3m_specs():
    env = SMACEnv("3m")
    try:
        check_env_specs(env, seed=0)
    finally:
        env.close()


@needs_smac
def test_real_smac_3m_train_script(tmp_path):
    final = run_train(tmp_path, "smac/3m", SMAC_LIMITS["3m"])
    assert final["frames"] >= 120 and 0.0 <= final["eval/win_rate"] <= 1.0


@needs_smacv2
def test_real_smacv2_protoss_5_vs_5_specs():
    cfg = smacv2_config("protoss_5_vs_5")
    kwargs = {k: v for k, v in cfg.items() if k not in ("family", "name", "win_key", "parallel")}
    env = SMACv2TeamEnv(expected_episode_limit=kwargs.pop("max_steps"), **kwargs)
    try:
        check_env_specs(env, seed=0)
    finally:
        env.close()


@needs_smacv2
def test_real_smacv2_protoss_5_vs_5_train_script(tmp_path):
    final = run_train(tmp_path, "smacv2/protoss_5_vs_5", 200)
    assert final["frames"] >= 400 and 0.0 <= final["eval/win_rate"] <= 1.0
