import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "False")
# one thread for the tests and the scripts they start (train.py's threads=auto would take every
# core): seeded runs then compute the same numbers on any machine's core count
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from tensordict.nn import TensorDictModule  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)


#: the smallest full-game-shaped predator-prey run the tests train on: batches of 2 episodes of
#: 10 steps (20 frames); tests add their own budget and evaluation settings
TINY_PREDATOR_PREY = [
    "env.grid_size=5",
    "env.n_predators=2",
    "env.n_prey=1",
    "env.max_steps=10",
    "n_envs=2",
    "rollout_steps=5",
    "episodes_per_batch=2",
]

#: a tiny predator-prey run with its replay buffer in every checkpoint (every 40 frames)
TINY_CHECKPOINTED_RUN = [
    *TINY_PREDATOR_PREY,
    "agent.hidden_dim=8",
    "batch_episodes=2",
    "eval_episodes=1",
    "eval_interval=40",
    "checkpoint_interval=40",
    "checkpoint_buffer=true",
]


class TableQ(nn.Module):
    """Agent utilities read from a learnable table ``[N, A]``, whatever the observation.

    With ``by_obs=True`` the observation's first feature selects between two tables
    (``obs == 0`` -> ``table[0]``, else ``table[1]``), so current and next states differ.
    """

    def __init__(self, table: torch.Tensor, by_obs: bool = False):
        super().__init__()
        self.table = nn.Parameter(torch.as_tensor(table, dtype=torch.float32).clone())
        self.by_obs = by_obs

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        batch = observation.shape[:-2]
        if not self.by_obs:
            return self.table.expand(*batch, *self.table.shape).clone()
        which = (observation[..., 0, 0] != 0).long()  # [*B]
        return self.table[which]


def table_qnet(
    table, by_obs=False, in_key=("agents", "observation"), out_key=("agents", "action_value")
) -> TensorDictModule:
    return TensorDictModule(TableQ(table, by_obs), in_keys=[in_key], out_keys=[out_key])


def transition(
    action,
    reward,
    terminated,
    n_actions=3,
    obs=0.0,
    next_obs=1.0,
    mask=None,
    next_mask=None,
    state_dim=1,
) -> TensorDict:
    """A batch of hand-built transitions with ``N = action.shape[-1]`` agents."""
    action = torch.as_tensor(action)
    b, n = action.shape
    full = torch.ones(b, n, n_actions, dtype=torch.bool)
    reward = torch.as_tensor(reward, dtype=torch.float32).reshape(b, 1)
    terminated = torch.as_tensor(terminated).reshape(b, 1).bool()
    return TensorDict(
        {
            "agents": {
                "observation": torch.full((b, n, 1), float(obs)),
                "action": action,
                "action_mask": full if mask is None else mask,
            },
            "state": torch.full((b, state_dim), float(obs)),
            "next": {
                "agents": {
                    "observation": torch.full((b, n, 1), float(next_obs)),
                    "action_mask": full.clone() if next_mask is None else next_mask,
                },
                "state": torch.full((b, state_dim), float(next_obs)),
                "reward": reward,
                "terminated": terminated,
                "truncated": torch.zeros_like(terminated),
                "done": terminated.clone(),
            },
        },
        batch_size=[b],
    )


@pytest.fixture
def make_transition():
    return transition


@pytest.fixture
def make_table_qnet():
    return table_qnet


ROOT = Path(__file__).resolve().parent.parent


def _run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"RL_WARNINGS": "False", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def run_script():
    return _run_script


def compose_config(name: str, *overrides: str) -> dict:
    """``configs/<name>.yaml`` with Hydra ``overrides``, resolved to plain containers (what
    ``scripts/<name>.py`` hands its run function)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return OmegaConf.to_container(compose(name, overrides=list(overrides)), resolve=True)
