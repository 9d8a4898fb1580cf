"""Learning on the paper's matrix game with the default settings of scripts/matrix_game.py."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from resq_torchrl.training import train_matrix_game, train_matrix_game_seeds

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def default_config(algorithm: str, *overrides: str) -> dict:
    """Exactly what ``scripts/matrix_game.py algorithm=<algorithm> ...`` trains with."""
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("matrix_game", overrides=[f"algorithm={algorithm}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def check_resq_solution(r: dict) -> None:
    q_jt, q_tot = torch.tensor(r["q_jt"]), torch.tensor(r["q_tot"])
    payoff = torch.tensor(r["payoff"])
    greedy = tuple(r["greedy_action"])
    assert (q_jt - payoff).abs().max() <= 0.5, r
    assert (torch.tensor(r["q_r"]) <= 0).all(), r
    assert q_jt[greedy] == q_tot[greedy], r
    assert r["igm_consistent"], r


def test_resq_recovers_the_optimum_for_one_seed():
    """Property: with the default settings, seed 0 of ResQ learns greedy (A, A) and a Q_jt
    within 0.5 of the payoff in every cell (the full 20-seed claim is the slow test)."""
    r = train_matrix_game(default_config("resq", "seed=0", "progress=false"))
    assert r["greedy_action"] == [0, 0], r
    check_resq_solution(r)


@pytest.mark.slow
def test_resq_recovers_the_optimum_on_19_of_20_seeds():
    """Property (issue "Foundation"): ResQ, default settings, seeds 0..19: greedy (A, A) in at
    least 19 runs; in those, max |Q_jt - payoff| <= 0.5, Q_r <= 0 everywhere,
    Q_jt == Q_tot at the greedy cell and IGM consistent."""
    cfg = default_config("resq", "progress=false")
    results = train_matrix_game_seeds(cfg, {"resq": cfg["algorithm"]}, range(20), workers=2)
    optimal = [r for r in results if r["greedy_action"] == [0, 0]]
    assert len(optimal) >= 19, [(r["seed"], r["greedy_action"]) for r in results]
    for r in optimal:
        check_resq_solution(r)


@pytest.mark.slow
def test_resz_recovers_the_optimum_on_19_of_20_seeds():
    """Property (issue "ResZ"): ResZ, default settings but 16000 updates, seeds 0..19: greedy
    (A, A) by the mean in at least 19 runs; in those, the expected Q_jt is within 0.5 of the
    payoff in every cell, every residual quantile is <= 0 (at the 32 evaluation fractions,
    in every cell), Q_jt == Q_tot at the greedy cell and the table is IGM consistent.

    Budget: twice the 8000 updates every method gets in docs/matrix_game.md. At 8000, 5 of
    20 seeds were still on the (C, C) plateau with a near-constant DMIX mean (measured,
    docs/results.md); seed 10, one of them, reaches (A, A) exactly with 16000."""
    cfg = default_config("resz", "progress=false", "n_updates=16000")
    results = train_matrix_game_seeds(cfg, {"resz": cfg["algorithm"]}, range(20), workers=2)
    optimal = [r for r in results if r["greedy_action"] == [0, 0]]
    assert len(optimal) >= 19, [(r["seed"], r["greedy_action"]) for r in results]
    for r in optimal:
        check_resq_solution(r)
        assert r["z_r_max"] <= 0, r
