"""scripts/plot.py and resq_torchrl/analysis/aggregate.py: IQM, bootstrap intervals and the
probability of improvement against hand-computed values; run logs of resumed and short runs;
a Hydra multirun of train.py whose runs plot.py aggregates."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_PREDATOR_PREY
from script_runner import run_in_process
from test_cli import one_error_line

from resq_torchrl.analysis import aggregate
from resq_torchrl.errors import ConfigError

# ------------------------------------------------------------------------------- statistics


def test_iqm_is_the_mean_of_the_middle_half():
    # 8 values: a quarter (2) cut from each end, mean of 3, 4, 5, 6
    assert aggregate.iqm(np.array([100.0, 1, 7, 2, 6, 3, 5, 4])) == pytest.approx(4.5)
    # per column: [0, 1, 2, 3] and [4, 8, 12, 1000] -> mean of the middle two
    scores = np.array([[0.0, 4], [1, 8], [2, 12], [3, 1000]])
    np.testing.assert_allclose(aggregate.iqm(scores), [1.5, 10.0])
    # fewer than 4 values: a quarter of a run is cut from nothing, the mean
    assert aggregate.iqm(np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)


def test_probability_of_improvement_counts_pairs_and_half_ties():
    poi = aggregate.probability_of_improvement
    assert poi([5.0, 6, 7], [1.0, 2, 3]) == 1.0
    assert poi([1.0, 2, 3], [5.0, 6, 7]) == 0.0
    assert poi([1.0, 2], [1.0, 2]) == 0.5
    # pairs (1,1) tie, (1,3) no, (2,1) yes, (2,3) no: (0.5 + 1) / 4
    assert poi([1.0, 2], [1.0, 3]) == pytest.approx(0.375)
    # batched along the leading axis
    np.testing.assert_allclose(
        poi(np.array([[1.0, 2], [9, 9]]), np.array([[1.0, 3], [0, 0]])), [0.375, 1.0]
    )


def test_statistics_agree_with_rliable():
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 1)), rng.normal(0.5, size=(5, 1)).round(1)
    assert aggregate.iqm(x[:, 0]) == pytest.approx(metrics.aggregate_iqm(x))
    assert aggregate.probability_of_improvement(x[:, 0], y[:, 0]) == pytest.approx(
        metrics.probability_of_improvement(x, y)
    )
    ties = np.array([[0.0], [0.5], [0.5]])
    assert aggregate.probability_of_improvement(ties[:, 0], ties[:2, 0]) == pytest.approx(
        metrics.probability_of_improvement(ties, ties[:2])
    )


def test_intervals():
    rng = np.random.default_rng(0)
    # separated samples: every resample of X is above every resample of Y
    low, high = aggregate.interval(
        [np.array([5.0, 6, 7]), np.array([1.0, 2, 3])],
        lambda x, y, axis: aggregate.probability_of_improvement(x, y, axis=axis),
        200,
        0.95,
        rng,
    )
    assert (low, high) == (1.0, 1.0)
    # an IQM interval lies within the data and holds the estimate; the same seed, the same one
    data = np.array([0.0, 1, 2, 3, 10])
    a = aggregate.interval([data], aggregate.iqm, 500, 0.95, np.random.default_rng(1))
    b = aggregate.interval([data], aggregate.iqm, 500, 0.95, np.random.default_rng(1))
    assert a == b and 0.0 <= a[0] <= aggregate.iqm(data) <= a[1] <= 10.0 and a[0] < a[1]
    # at the level asked, whatever scipy's draws: the exact bootstrap distribution (all 5^5
    # resamples, equally likely) has about 95% of its mass in the interval, 2.5% or so on
    # each side (a 50% interval holds 65% of it, 16% below and 19% above)
    every = np.stack(np.meshgrid(*[np.arange(len(data))] * len(data)), -1).reshape(-1, 5)
    exact = aggregate.iqm(data[every], axis=-1)
    below, above = (exact < a[0]).mean(), (exact > a[1]).mean()
    assert below <= 0.05 and above <= 0.05 and 1 - below - above >= 0.92, (below, above)
    # one seed: no interval
    assert aggregate.interval([np.array([1.0])], aggregate.iqm, 100, 0.95, rng) is None


def test_latest_segment_keeps_the_last_value_of_each_frame():
    # resumed at 20 after logging up to 30: the first 20 and 30 were redone
    assert aggregate.latest_segment(np.array([10, 20, 30, 20, 30, 40])).tolist() == [0, 3, 4, 5]
    # the final evaluation repeats the last periodic one
    assert aggregate.latest_segment(np.array([10, 20, 20])).tolist() == [0, 2]


def test_runs_are_aligned_on_a_common_grid():
    a = np.array([10.0, 20, 30])
    b = np.array([12.0, 22])
    grid, tolerance = aggregate.common_grid([a, b])
    np.testing.assert_allclose(grid, [10, 20, 30])
    assert tolerance == 5
    values, defined = aggregate.on_grid(b, np.array([0.0, 10.0]), grid, tolerance)
    # 10 is within half a step of b's first evaluation; 30 is past its end by more
    assert defined.tolist() == [True, True, False]
    np.testing.assert_allclose(values[:2], [0.0, 8.0])  # 20: 8/10 of the way from 12 to 22


def test_curve_of_one_seed_has_no_interval_and_no_warning():
    grid = np.array([0.0, 1, 2])
    values = np.array([[1.0, 2, 3], [3.0, 4, 0]])
    defined = np.array([[True, True, True], [True, True, False]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = aggregate.curve(grid, values, defined, 100, 0.95, np.random.default_rng(0))
    np.testing.assert_allclose(c.iqm, [2.0, 3.0, 3.0])
    assert c.seeds.tolist() == [2, 2, 1]
    assert np.isfinite(c.low[:2]).all() and np.isnan(c.low[2]) and np.isnan(c.high[2])
    # a point no run reaches is left out
    c = aggregate.curve(grid, values, defined & [[1, 1, 0]], 100, 0.95, np.random.default_rng(0))
    assert c.frames.tolist() == [0.0, 1.0]


def test_compare_pairs():
    names = ["resq", "qmix", "vdn"]
    assert aggregate.pairs(names, "all") == [("resq", "qmix"), ("resq", "vdn"), ("qmix", "vdn")]
    assert aggregate.pairs(names, ["vdn", "resq"]) == [("vdn", "resq")]
    assert aggregate.pairs(names, None) == []
    with pytest.raises(ConfigError, match="no runs of cw_qmix; the methods are resq, qmix, vdn"):
        aggregate.pairs(names, ["resq", "cw_qmix"])


# ------------------------------------------------------------------------ the script, on logs


def write_run(root: Path, name: str, frames, values, extra=None, train=None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    rows = [
        {"frames": f, "eval/return": v, "eval/episodes": 4, **(extra or {})}
        for f, v in zip(frames, values, strict=True)
    ]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "final.json").write_text(json.dumps(rows[-1]))
    if train is not None:
        csv = run / name / "scalars" / "train"
        csv.mkdir(parents=True)
        (csv / "return.csv").write_text("".join(f"{f},{v}\n" for f, v in train))
    return run


@pytest.fixture
def logs(tmp_path):
    """Three seeds of two methods. good: final 20, 21, 22 (seed 0 resumed at 100 after logging
    to 300: its 200 and 300 were redone, 200 now 15); bad: final 0, -1, -2, seed 2 short (ends
    at 200) and its last evaluation repeated (the final one)."""
    root = tmp_path / "logs"
    train = [(50, 1.0), (150, 2.0), (250, 3.0)]
    write_run(root, "good_seed0", [100, 200, 300, 200, 300], [0, 10, 20, 15, 20], train=train)
    write_run(root, "good_seed1", [100, 200, 300], [1, 11, 21], train=train)
    write_run(root, "good_seed2", [100, 200, 300], [2, 12, 22], train=train)
    write_run(root, "bad_seed0", [100, 200, 300], [0, 0, 0])
    write_run(root, "bad_seed1", [100, 200, 300], [0, -0.5, -1])
    write_run(root, "bad_seed2", [100, 200, 200], [0, -1, -2])
    return root


def test_plot_three_seeds_of_two_methods(logs, tmp_path):
    out = tmp_path / "out" / "iqm"
    result = run_in_process(
        f"scripts/plot.py runs='[{logs}/good_seed*,{logs}/bad_seed*]' out={out} reps=200",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Warning" not in result.stderr, result.stderr
    assert f"wrote {out}.png, {out}.md, {out}.json" in result.stdout
    assert (tmp_path / "out" / "iqm.png").stat().st_size > 10_000
    data = json.loads(Path(f"{out}.json").read_text())
    good, bad = data["methods"]["good"], data["methods"]["bad"]
    assert list(data["methods"]) == ["good", "bad"]  # the order of runs=
    assert good["final"] == [20, 21, 22] and good["final_iqm"]["value"] == pytest.approx(21)
    assert bad["final"] == [0, -1, -2] and bad["final_iqm"]["value"] == pytest.approx(-1)
    assert bad["best"] == [0, 0, 0] and bad["best_iqm"] == {"value": 0, "low": 0, "high": 0}
    low, high = good["final_iqm"]["low"], good["final_iqm"]["high"]
    assert 20 <= low < 21 < high <= 22
    # at 95%: the mean of 3 resampled seeds is 20 (or 22) with chance 1/27 and at most
    # 20 1/3 (at least 21 2/3) with 4/27 (15%), so the 2.5% and 97.5% quantiles reach those;
    # at 50% the interval would be 20 2/3 to 21 1/3
    assert low <= 20 + 1 / 3 + 1e-9 and high >= 22 - 1 / 3 - 1e-9, (low, high)
    # the curve: seed 0's redone 200 (15) counts; bad's seed 2 is gone at 300
    assert good["curve"]["frames"] == [100, 200, 300]
    np.testing.assert_allclose(good["curve"]["iqm"], [1, (15 + 11 + 12) / 3, 21])
    assert bad["curve"]["seeds"] == [3, 3, 2]
    # at 200 bad's seed 2 counts its last value there (-2, the final evaluation)
    np.testing.assert_allclose(bad["curve"]["iqm"], [0, (0 - 0.5 - 2) / 3, -0.5])
    # training return, binned by one grid step (100 frames): logged by good only
    assert good["train_curve"]["iqm"] == [1.0, 2.0, 3.0] and bad["train_curve"] is None
    poi = data["probability_of_improvement"]
    assert poi == [{"x": "good", "y": "bad", "value": 1.0, "low": 1.0, "high": 1.0}]
    table = Path(f"{out}.md").read_text()
    assert table.startswith("```bash\npython scripts/plot.py runs=")
    # best: seed 0's is 20 (its 200 and 300 redone), then 21, 22
    assert good["best"] == [20, 21, 22]
    assert f"| good | 3 | 300 | 21 [{low:.3g}, {high:.3g}] | 21 | 21 [" in table
    assert "| bad | 3 | 200 - 300 | -1 [" in table and "| 0 [0, 0] |" in table
    assert "| good | bad | 1 [1, 1] |" in table


def test_one_seed_is_said_to_have_no_interval(logs, tmp_path):
    result = run_in_process(
        f"scripts/plot.py runs={logs}/good_seed1 out={tmp_path}/one reps=50 compare=null",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| good | 1 | 300 | 21 (no interval: 1 seed) | 21 |" in result.stdout
    assert "Probability of improvement" not in result.stdout
    data = json.loads((tmp_path / "one.json").read_text())
    assert data["methods"]["good"]["curve"]["low"] == [None, None, None]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            "metric=eval/win_rate",
            "metric 'eval/win_rate' is in no eval.jsonl; they have: eval/episodes, eval/return",
        ),
        ("compare='[good,qmix]'", "compare: no runs of qmix; the methods are good"),
        ("reps=0", "reps must be a whole number >= 1"),
    ],
)
def test_mistakes_get_one_line(logs, tmp_path, args, message):
    result = run_in_process(f"scripts/plot.py runs='[{logs}/good_seed*]' {args}", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {message}" in result.stderr


def test_runs_that_match_nothing(tmp_path):
    result = run_in_process(f"scripts/plot.py runs={tmp_path}/nothing_seed*", tmp_path)
    assert result.returncode == 2
    assert f"error: runs: '{tmp_path}/nothing_seed*' matches no directory" in result.stderr
    result = run_in_process("scripts/plot.py", tmp_path)
    assert result.returncode == 2 and "error: runs is required" in result.stderr


def test_help(tmp_path):
    result = run_in_process("scripts/plot.py --help", tmp_path)
    assert result.returncode == 0
    assert "runs: ???" in result.stdout and "metric: eval/return" in result.stdout


# ------------------------------------------------------------------ multirun, then the plot


TINY_RUN = [
    *TINY_PREDATOR_PREY,
    "batch_episodes=2",
    "updates_per_episode=0.5",
    "eval_episodes=2",
    "eval_interval=20",
    "total_frames=60",
    "progress=false",
]


def test_multirun_of_two_seeds_then_plot(tmp_path):
    start = time.monotonic()
    result = run_in_process(
        ["scripts/train.py", "-m", "algorithm=qmix", "seed=0,1", *TINY_RUN], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["multirun", "qmix_predator_prey_seed0", "qmix_predator_prey_seed1"]
    assert list((tmp_path / "runs" / "multirun").glob("*/multirun.yaml"))
    result = run_in_process(
        "scripts/plot.py runs=runs/qmix_predator_prey_seed* out=runs/plot/tiny reps=100",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "runs" / "plot" / "tiny.json").read_text())
    method = data["methods"]["qmix_predator_prey"]
    assert method["seeds"] == [0, 1]
    finals = [json.loads((tmp_path / "runs" / r / "final.json").read_text()) for r in runs[1:]]
    # a run ends past total_frames=60 by less than a batch (2 episodes of at most 10 steps)
    assert method["frames_reached"] == [f["frames"] for f in finals]
    assert all(60 <= f["frames"] < 80 for f in finals)
    assert method["final"] == [f["eval/return"] for f in finals]
    # two seeds: the IQM trims nothing, the mean
    assert method["final_iqm"]["value"] == pytest.approx(sum(method["final"]) / 2)
    curve = method["curve"]
    first = [
        json.loads((tmp_path / "runs" / r / "eval.jsonl").read_text().splitlines()[0])
        for r in runs[1:]
    ]
    assert curve["frames"][0] == min(f["frames"] for f in first)
    assert curve["frames"][-1] == max(method["frames_reached"])
    assert set(curve["seeds"]) <= {1, 2} and curve["seeds"][0] == 2
    assert (tmp_path / "runs" / "plot" / "tiny.png").exists()
    assert (tmp_path / "runs" / "plot" / "tiny.md").exists()
    print(f"multirun and plot: {time.monotonic() - start:.0f} s")


@pytest.mark.slow  # each worker process imports torch afresh: about 30-50 s on 2 busy cores
def test_multirun_with_the_joblib_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    command = ["scripts/train.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = run_in_process([*command, "algorithm=vdn", "seed=0,1", *TINY_RUN], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout  # Hydra's log line
    for seed in (0, 1):  # the jobs' own output goes to their processes' stdout, not this one's
        final = json.loads((tmp_path / f"runs/vdn_predator_prey_seed{seed}/final.json").read_text())
        assert 60 <= final["frames"] < 80


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        # a panel asked for but logged by no run was dropped without a word
        ("train_metric=train/foo", "train_metric 'train/foo' is logged by no run"),
        ("grid_step=0", "grid_step must be > 0 (or null"),
        ("grid_step=-5", "grid_step must be > 0"),
    ],
)
def test_plot_settings_it_cannot_honour_are_one_line(logs, tmp_path, arg, message):
    result = run_in_process(
        f"scripts/plot.py runs='[{logs}/good_seed*]' out={tmp_path}/p reps=20 {arg}", tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {message}")
    assert "train/return" in result.stderr or "grid_step" in arg  # the scalars it has
    assert not list(tmp_path.glob("p.*"))


@pytest.mark.parametrize("value", ["-3", "0", "abc", "true"])
def test_train_bin_out_of_range_is_one_line_naming_it(logs, tmp_path, value):
    """train_bin=-3 ended on numpy's "'minlength' must not be negative", train_bin=0 was
    taken as null without a word, train_bin=abc was a traceback."""
    result = run_in_process(
        f"scripts/plot.py runs='[{logs}/good_seed*]' out={tmp_path}/p reps=20 train_bin={value}",
        tmp_path,
    )
    line = one_error_line(result)
    assert line.startswith("error: train_bin must be a number > 0 (frames per bin of the")
    assert "or null: one grid step" in line
    assert not list(tmp_path.glob("p.*"))
