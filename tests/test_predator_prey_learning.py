"""Learning on a small predator-prey through the whole recurrent pipeline (slow)."""

import json
from pathlib import Path

import pytest
from conftest import compose_config

from resq_torchrl.training.trainer import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_resq_learns_joint_captures_on_a_small_predator_prey(tmp_path):
    """Property: GRU agents, episode replay, TD(lambda) and ResQ learn a capture that needs
    two predators acting together. Easy variant (no punishment for a lone catch) of a small
    game: 2 predators, 1 prey, 5x5 grid, 50-step episodes; the optimum is 10 (one capture).
    Budget: 40k env steps, epsilon annealed over the first 10k, seed 0. The greedy evaluation
    (32 episodes) at the end of the budget must reach 90% of the optimum.
    (Measured with the reference rules of PredatorPreyEnv: 7.2 at 15k steps, 10.0 from 20k
    on, 9.7 once at 35k. The -2 variant's 0.0 in docs/results.md predates those rules.)"""
    overrides = [
        "algorithm=resq",
        "env=predator_prey",
        "seed=0",
        f"output_dir={tmp_path}",
        "env.grid_size=5",
        "env.n_predators=2",
        "env.n_prey=1",
        "env.max_steps=50",
        "env.miscapture_punishment=0.0",
        "total_frames=40000",
        "exploration.anneal_frames=10000",
        "eval_interval=5000",
        "eval_episodes=32",
        "buffer_episodes=1000",
        "progress=false",
    ]
    cfg = compose_config("train", *overrides)
    final = train(cfg)
    history = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert final["eval/return"] >= 9.0, history
