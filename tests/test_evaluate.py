"""scripts/evaluate.py and resq_torchrl/training/evaluation.py: statistics over episodes
(mean, std, IQM, bootstrap intervals) against hand-computed values, greedy episodes, and
the script on checkpoints of tiny training runs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_PREDATOR_PREY, compose_config
from script_runner import run_in_process
from tensordict.nn import TensorDictModule
from torchrl.envs import Transform, TransformedEnv

from resq_torchrl.envs import MatrixGameEnv
from resq_torchrl.errors import CheckpointNotFoundError
from resq_torchrl.training.checkpoint import load_checkpoint
from resq_torchrl.training.evaluation import (
    episode_statistics,
    evaluate_run,
    greedy_episodes,
)
from resq_torchrl.training.trainer import train

#: tiny runs of train.py per env (a few seconds each)
TINY_RUNS = {
    "predator_prey": ["algorithm=resq", "env=predator_prey", *TINY_PREDATOR_PREY],
    "matrix_game": [
        "algorithm=qmix",
        "env=matrix_game",
        "n_envs=4",
        "rollout_steps=1",
        "episodes_per_batch=4",
    ],
}


def trained_run(out: Path, env: str, total_frames: int = 40) -> Path:
    """A checkpoint of a tiny ``train.py`` run on ``env`` in ``out``."""
    cfg = compose_config(
        "train",
        *TINY_RUNS[env],
        f"output_dir={out}",
        f"total_frames={total_frames}",
        "batch_episodes=2",
        "eval_episodes=2",
        f"eval_interval={total_frames}",
        "progress=false",
    )
    train(cfg)
    return out


@pytest.fixture(scope="module")
def pp_run(tmp_path_factory) -> Path:
    return trained_run(tmp_path_factory.mktemp("pp"), "predator_prey")


# ------------------------------------------------------------------------------- statistics


def test_iqm_mean_and_std_of_known_lists():
    # 8 values: floor(8 / 4) = 2 cut from each end, IQM = mean(2, 3, 4, 5) = 3.5
    s = episode_statistics([5, 0, 100, 3, 1, 6, 2, 4])
    assert s["n"] == 8
    assert s["iqm"] == pytest.approx(3.5)
    assert s["mean"] == pytest.approx(121 / 8)
    assert s["std"] == pytest.approx(statistics.stdev([5, 0, 100, 3, 1, 6, 2, 4]))
    assert (s["min"], s["max"]) == (0.0, 100.0)
    # 10 values: 2 cut from each end, IQM = mean(3..8) = 5.5 whatever the outlier
    assert episode_statistics([*range(1, 10), 1000])["iqm"] == pytest.approx(5.5)
    # rliable's aggregate IQM is the same 25% trimmed mean
    from rliable import metrics

    x = np.array([5, 0, 100, 3, 1, 6, 2, 4, -7, 11, 13.0])
    assert episode_statistics(x)["iqm"] == pytest.approx(float(metrics.aggregate_iqm(x)))


def test_bootstrap_interval_of_two_episodes_by_hand():
    """Resampling [0, 1] twice gives means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the
    95% percentile interval is [0, 1]; the 40% one (30th and 70th percentiles) is [0.5, 0.5].
    With 2 episodes nothing is trimmed: the IQM is the mean."""
    s = episode_statistics([0.0, 1.0], confidence=0.95)
    assert s["mean_ci"] == [0.0, 1.0] and s["iqm_ci"] == [0.0, 1.0]
    s = episode_statistics([0.0, 1.0], confidence=0.4)
    assert s["mean_ci"] == [0.5, 0.5] and s["iqm"] == 0.5


def test_intervals_contain_the_estimates_and_are_seeded():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=40)
    s = episode_statistics(x, seed=5)
    assert s["mean_ci"][0] < s["mean"] < s["mean_ci"][1]
    assert s["iqm_ci"][0] < s["iqm"] < s["iqm_ci"][1]
    assert episode_statistics(x, seed=5) == s  # same seed, same interval
    assert episode_statistics(x, seed=6)["mean_ci"] != s["mean_ci"]
    wider = episode_statistics(x, confidence=0.99, seed=5)["mean_ci"]
    assert wider[0] < s["mean_ci"][0] and wider[1] > s["mean_ci"][1]


def test_identical_returns_give_a_point_interval():
    s = episode_statistics([7.9] * 5)
    assert s["std"] == 0.0 and s["mean_ci"] == [7.9, 7.9] and s["iqm_ci"] == [7.9, 7.9]


def test_one_episode_has_no_spread_and_says_so():
    s = episode_statistics([4.0])
    assert (s["mean"], s["iqm"]) == (4.0, 4.0)
    assert s["std"] is None and s["mean_ci"] is None and s["iqm_ci"] is None
    assert "1 episode" in s["note"] and "episodes>=2" in s["note"]
    assert episode_statistics([4.0, 5.0])["note"] is None


@pytest.mark.parametrize(
    "values, message",
    [([], "at least 1 episode"), ([1.0, float("nan")], "not finite")],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        episode_statistics(values)


def test_a_confidence_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="confidence must be in"):
        episode_statistics([1.0, 2.0], confidence=95)


# --------------------------------------------------------------------------------- episodes


def test_greedy_episodes_count_the_first_episode_of_each_env():
    """3 one-step matrix games over 3 steps: each env plays 3 episodes, only the first
    counts; the fixed joint actions (C, C), (A, A), (A, B) earn 7.9, 8, -12."""
    env = MatrixGameEnv(batch_size=[3])
    actions = torch.tensor([[2, 2], [0, 0], [0, 1]])

    def act(obs):
        return actions.clone()

    policy = TensorDictModule(
        act, in_keys=[("agents", "observation")], out_keys=[("agents", "action")]
    )
    out = greedy_episodes(env, policy, max_steps=3)
    assert out["returns"].tolist() == pytest.approx([7.9, 8.0, -12.0])
    assert out["lengths"].tolist() == [1, 1, 1] and out["completed"].all()
    assert "won" not in out


class WonIfPositive(Transform):
    """Writes ``"battle_won"`` (as SMAC does): the step's reward is positive."""

    def _step(self, tensordict, next_tensordict):
        next_tensordict.set("battle_won", next_tensordict.get("reward") > 0)
        return next_tensordict


def test_greedy_episodes_read_the_win_key():
    env = TransformedEnv(MatrixGameEnv(batch_size=[3]), WonIfPositive())
    actions = torch.tensor([[2, 2], [0, 1], [1, 1]])  # 7.9, -12, 0
    policy = TensorDictModule(
        lambda obs: actions.clone(),
        in_keys=[("agents", "observation")],
        out_keys=[("agents", "action")],
    )
    out = greedy_episodes(env, policy, max_steps=2, win_key="battle_won")
    assert out["won"].tolist() == [True, False, False]
    assert "won" not in greedy_episodes(env, policy, max_steps=2, win_key="nothing")


# ------------------------------------------------------------------------------ evaluate_run


def test_evaluate_run_plays_the_episodes_in_batches(pp_run):
    from resq_torchrl.training.trainer import evaluate_checkpoint

    result = evaluate_run(pp_run, episodes=5, n_envs=2, seed=3)
    assert result["episodes"] == result["eval/episodes"] == 5
    assert len(result["returns"]) == len(result["lengths"]) == 5
    assert all(1 <= n <= 10 for n in result["lengths"])  # env.max_steps=10
    assert result["eval/return"] == pytest.approx(float(np.mean(result["returns"])))
    assert result["return"]["mean"] == result["eval/return"]
    assert result["checkpoint_frames"] == 40 and result["seed"] == 3
    assert evaluate_run(pp_run, episodes=5, n_envs=2, seed=3) == result  # greedy, seeded
    # one batch of 4 envs: the same episodes as the trainer's evaluation of the checkpoint
    one_batch = evaluate_run(pp_run, episodes=4, seed=3)
    assert one_batch["eval/return"] == pytest.approx(
        evaluate_checkpoint(pp_run, episodes=4, seed=3)["eval/return"]
    )


def test_evaluate_run_counts_predator_prey_events_and_they_add_up_to_the_returns(pp_run):
    from resq_torchrl.training.trainer import evaluate_checkpoint

    result = evaluate_run(pp_run, episodes=6, n_envs=3, seed=1)
    captures, lone = result["captures_per_episode"], result["lone_catches_per_episode"]
    assert len(captures) == len(lone) == len(result["returns"]) == 6
    for r, c, p in zip(result["returns"], captures, lone, strict=True):
        assert r == pytest.approx(10 * c - 2 * p)  # the tiny env's rewards: +10, -2
    assert result["eval/captures"] == pytest.approx(float(np.mean(captures)))
    assert result["lone_catches"]["mean"] == pytest.approx(float(np.mean(lone)))
    # the trainer's evaluation logs the same means
    trainer = evaluate_checkpoint(pp_run, episodes=3, seed=1)
    same = evaluate_run(pp_run, episodes=3, seed=1)
    assert trainer["eval/lone_catches"] == pytest.approx(same["eval/lone_catches"])
    assert trainer["eval/captures"] == pytest.approx(same["eval/captures"])


def test_evaluate_run_without_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        evaluate_run(tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=f"no checkpoint at {tmp_path / 'x.pt'}"):
        evaluate_run(tmp_path, checkpoint=tmp_path / "x.pt")


def test_another_checkpoint_file_and_an_untrained_one_are_said(pp_run, tmp_path):
    """``checkpoint=PATH`` evaluates that file; one saved before any update gets a note."""
    state = torch.load(pp_run / "checkpoint.pt", weights_only=True)
    state["updates"] = 0
    torch.save(state, tmp_path / "frames_40.pt")
    result = evaluate_run(tmp_path / "elsewhere", episodes=2, checkpoint=tmp_path / "frames_40.pt")
    assert result["checkpoint"] == str(tmp_path / "frames_40.pt")
    assert result["checkpoint_updates"] == 0
    assert any("before any update" in note for note in result["notes"])
    assert not any("update" in note for note in evaluate_run(pp_run, episodes=2)["notes"])


# ---------------------------------------------------------------------------------- script


def test_the_script_prints_a_table_and_writes_json(pp_run, tmp_path):
    out = tmp_path / "eval" / "pp.json"
    proc = run_in_process(
        f"scripts/evaluate.py output_dir={pp_run} episodes=3 json_out={out}", tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # stdout: the summary, JSON only
    assert summary["eval/episodes"] == 3 and "returns" not in summary
    record = json.loads(out.read_text())
    assert len(record["returns"]) == 3
    assert record["return"]["iqm"] == summary["return"]["iqm"]
    assert "IQM" in proc.stderr and "mean 95% CI" in proc.stderr
    assert f"wrote {out}" in proc.stderr


def test_the_script_writes_next_to_the_run_and_notes_one_episode(pp_run, tmp_path):
    proc = run_in_process(f"scripts/evaluate.py output_dir={pp_run} episodes=1", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((pp_run / "evaluation.json").read_text())
    assert record["episodes"] == 1 and record["return"]["mean_ci"] is None
    assert "note: 1 episode: no spread and no interval" in proc.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        ("episodes=0", "episodes must be >= 1"),
        ("n_envs=0", "n_envs must be >= 1"),
        ("render=true render_format=webm", "unknown render_format 'webm'; choose one of: gif"),
    ],
)
def test_script_mistakes_get_one_line(pp_run, tmp_path, args, fragment):
    proc = run_in_process(f"scripts/evaluate.py output_dir={pp_run} {args}", tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_a_checkpoint_of_another_run_never_writes_into_this_one(pp_run, tmp_path):
    """``output_dir=A checkpoint=<B's checkpoint>`` wrote B's evaluation as A's
    ``evaluation.json``: refused unless ``json_out=`` says where it goes."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes((pp_run / "checkpoint.pt").read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = f"scripts/evaluate.py output_dir={tmp_path} checkpoint={other / 'checkpoint.pt'}"
    proc = run_in_process(f"{args} episodes=1", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = [line for line in proc.stderr.splitlines() if line.startswith("error:")][-1]
    assert "is not a file of output_dir" in line and "json_out=" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    out = tmp_path / "b.json"
    proc = run_in_process(f"{args} episodes=1 json_out={out}", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["episodes"] == 1


def test_render_of_an_env_it_cannot_draw_fails_before_evaluating(pp_run, tmp_path):
    """A checkpoint whose env is SMAX: render=true names the envs it draws, at once."""
    state = load_checkpoint(pp_run / "checkpoint.pt")
    state["config"]["env"] = {"family": "smax", "name": "smax_3m", "max_steps": 10}
    run = tmp_path / "other_run"  # not "smax" in argv: script_runner would import jaxmarl
    run.mkdir()
    torch.save(state, run / "checkpoint.pt")
    proc = run_in_process(f"scripts/evaluate.py output_dir={run} render=true", tmp_path)
    assert proc.returncode == 2
    assert "render=true draws the predator_prey, matrix_game, vmas envs, not 'smax'" in (
        proc.stderr
    )
    assert not (run / "evaluation.json").exists()


class _WritesAFile:
    """Unpickling this calls ``Path.touch(marker)``: loading it would run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_script_refuses_a_checkpoint_that_would_run_code(pp_run, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(pp_run / "checkpoint.pt", weights_only=True)
    state["config"]["env"]["payload"] = _WritesAFile(marker)
    bad = tmp_path / "bad_run"
    bad.mkdir()
    torch.save(state, bad / "checkpoint.pt")
    proc = run_in_process(f"scripts/evaluate.py output_dir={bad} render=true", tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: refusing to load") and line.endswith("it was not run"), line
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (bad / "evaluation.json").exists()
