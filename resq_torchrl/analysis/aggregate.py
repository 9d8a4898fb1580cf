"""Aggregate statistics of ``scripts/train.py`` runs over seeds, as rliable recommends
(Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021).

- **IQM**: the interquartile mean over seeds, ``scipy.stats.trim_mean(x, 0.25)`` (rliable's
  ``metrics.aggregate_iqm`` for one task).
- **95% intervals**: percentile bootstrap over seeds, ``scipy.stats.bootstrap`` (with one task,
  rliable's stratified bootstrap is this bootstrap). rliable's own bootstrap module
  (``rliable.library``, on ``arch``) does not import with pandas 3, hence scipy's.
- **Probability of improvement** ``P(X > Y)``: the chance that a random seed of X ends above a
  random seed of Y, ties counting half (rliable's ``metrics.probability_of_improvement``: the
  Mann-Whitney U over ``m n``), with an interval from resampling the seeds of X and Y
  independently.

A run directory (``output_dir`` of train.py) holds ``eval.jsonl`` (one JSON object per greedy
evaluation: ``frames``, ``eval/return``, ...) and the CSV logger's
``<experiment>/scalars/<key>.csv`` (``frames,value`` rows). Its method is its name before
``_seed`` (``resq_predator_prey_seed2`` -> ``resq_predator_prey``, seed 2). A resumed run that
logged past its checkpoint before it was killed redoes that stretch: a row is kept only when
every later row has more frames, so the last value of each frame counts.

Curves: the runs' evaluations fall at slightly different frames (whole batches), so each run
is read on one common grid of frames by linear interpolation between its evaluations, within
half a grid step of its first and last evaluation and never beyond; a point of the grid counts
the seeds that reach it (a short run drops out where it ends). With one seed at a point the
point has no interval.
"""

from __future__ import annotations

import glob
import itertools
import numbers
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats

from resq_torchrl.errors import ConfigError
from resq_torchrl.training.evallog import read_eval_rows

#: the fraction cut from each end for the interquartile mean
IQM_CUT = 0.25


# ------------------------------------------------------------------------------- statistics


def iqm(scores: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean of ``scores`` along ``axis`` (25% trimmed from each end).

    ``scores`` ``[R, *rest]`` with ``axis=0`` -> ``[*rest]``.
    """
    return scipy.stats.trim_mean(np.asarray(scores, dtype=float), IQM_CUT, axis=axis)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """``P(X > Y) + P(X = Y) / 2`` over every pair of a sample of ``x`` and one of ``y``.

    ``x`` ``[*B, m]``, ``y`` ``[*B, n]`` (samples along ``axis``) -> ``[*B]``.
    """
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)[..., :, None]  # [*B, m, 1]
    y = np.moveaxis(np.asarray(y, dtype=float), axis, -1)[..., None, :]  # [*B, 1, n]
    return (x > y).mean((-2, -1)) + 0.5 * (x == y).mean((-2, -1))


def interval(
    samples: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray],
    reps: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Percentile bootstrap interval of ``statistic(*samples, axis=0)``, each sample ``[n_i,
    *rest]`` resampled along axis 0 independently of the others; ``None`` when a sample has
    fewer than two values (no interval from one seed). Returns (low, high), each ``[*rest]``."""
    if any(len(s) < 2 for s in samples):
        return None
    result = scipy.stats.bootstrap(
        tuple(samples),
        statistic,
        n_resamples=reps,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        paired=False,
        axis=0,
        rng=rng,
    )
    return np.asarray(result.confidence_interval.low), np.asarray(result.confidence_interval.high)


# ------------------------------------------------------------------------------------ runs


def latest_segment(frames: np.ndarray) -> np.ndarray:
    """Indices of the rows to keep from a log whose run was resumed after logging further
    than its checkpoint: a row is kept only when every later row has more frames (the resumed
    run redid the stretch, and the last value logged for a frame counts).

    ``frames`` ``[E]`` -> indices ``[E']`` with ``frames[indices]`` strictly increasing."""
    keep, lowest = [], np.inf
    for i in range(len(frames) - 1, -1, -1):
        if frames[i] < lowest:
            keep.append(i)
            lowest = frames[i]
    return np.array(keep[::-1], dtype=int)


def run_name(path: Path) -> tuple[str, int | None]:
    """(method, seed) of a run directory: ``cw_qmix_seed1`` -> ``("cw_qmix", 1)``; a name
    without ``_seed<k>`` is its own method with no seed."""
    match = re.fullmatch(r"(.*)_seed(\d+)", path.name)
    return (match.group(1), int(match.group(2))) if match else (path.name, None)


def find_runs(patterns: Sequence[str]) -> list[Path]:
    """The run directories (those holding an ``eval.jsonl``) named by ``patterns``: paths or
    glob patterns, a directory without ``eval.jsonl`` standing for the runs directly in it.
    Order: as given, duplicates dropped."""
    if not patterns:
        raise ConfigError("runs is empty: give run directories, e.g. runs='[runs/resq_*_seed*]'")
    found: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        dirs = [Path(m) for m in matches if Path(m).is_dir()]
        if not dirs:
            raise ConfigError(f"runs: {pattern!r} matches no directory")
        runs = []
        for d in dirs:
            if (d / "eval.jsonl").is_file():
                runs.append(d)
            else:
                runs.extend(sorted(p.parent for p in d.glob("*/eval.jsonl")))
        if not runs:
            raise ConfigError(
                f"runs: no eval.jsonl in {pattern!r} nor in the directories directly under it "
                "(a run directory is a train.py output_dir)"
            )
        found.extend(r for r in runs if r not in found)
    return found


def read_eval(run: Path, metric: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(frames ``[E]``, values ``[E]``, the keys the rows have) of ``run/eval.jsonl``: rows
    of the latest segment (see :func:`latest_segment`), rows without a finite ``metric``
    dropped. A line cut short (a run killed while writing) is skipped."""
    rows = read_eval_rows(run / "eval.jsonl", note=True)
    keys = sorted({k for r in rows for k in r})
    rows = [r for r in rows if "frames" in r]
    rows = [rows[i] for i in latest_segment(np.array([r["frames"] for r in rows], dtype=float))]
    rows = [r for r in rows if isinstance(r.get(metric), (int, float)) and np.isfinite(r[metric])]
    frames = np.array([r["frames"] for r in rows], dtype=float)
    return frames, np.array([r[metric] for r in rows], dtype=float), keys


def read_scalar(run: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(frames ``[T]``, values ``[T]``) of the CSV logger's ``key`` (``train/return``) in
    ``run``: the latest segment, non-finite values dropped; ``None`` without such a file."""
    files = sorted(run.glob(f"*/scalars/{key}.csv"))
    if not files:
        return None
    try:
        data = np.loadtxt(files[0], delimiter=",", ndmin=2)
    except ValueError:
        print(f"note: {files[0]} is not frames,value rows: not plotted", file=sys.stderr)
        return None
    if data.shape[0] == 0 or data.shape[1] < 2:
        return None
    data = data[latest_segment(data[:, 0])]
    data = data[np.isfinite(data[:, 1])]
    return (data[:, 0], data[:, 1]) if len(data) else None


@dataclass
class Run:
    """One run's evaluations of a metric, frames strictly increasing."""

    path: Path
    method: str
    seed: int | None
    frames: np.ndarray  # [E]
    values: np.ndarray  # [E]
    train: tuple[np.ndarray, np.ndarray] | None = None  # ([T], [T]) training scalar


def load_runs(
    paths: Sequence[Path], metric: str, train_metric: str | None = None
) -> dict[str, list[Run]]:
    """The runs at ``paths`` grouped by method (in order of first appearance). Runs with no
    evaluation of ``metric`` yet are left out with a note."""
    methods: dict[str, list[Run]] = {}
    seen_keys: set[str] = set()
    for path in paths:
        frames, values, keys = read_eval(path, metric)
        seen_keys.update(keys)
        if not len(frames):
            print(f"note: {path} has no evaluation of {metric} yet: left out", file=sys.stderr)
            continue
        method, seed = run_name(path)
        runs = methods.setdefault(method, [])
        twin = next((r for r in runs if seed is not None and r.seed == seed), None)
        if twin is not None:
            raise ConfigError(
                f"runs {twin.path} and {path} are both {method} seed {seed}: plot them "
                "separately, or rename one so that the name before _seed tells them apart"
            )
        train = read_scalar(path, train_metric) if train_metric else None
        runs.append(Run(path, method, seed, frames, values, train))
    every = [run for runs in methods.values() for run in runs]
    if train_metric and every and all(run.train is None for run in every):
        logged = sorted(
            {
                f.relative_to(d).with_suffix("").as_posix()
                for r in every
                for d in r.path.glob("*/scalars")
                for f in d.rglob("*.csv")
            }
        )
        raise ConfigError(
            f"train_metric {train_metric!r} is logged by no run (their CSV scalars: "
            f"{', '.join(logged) or 'none'}); or train_metric=null for no training panel"
        )
    if not methods:
        if seen_keys and metric not in seen_keys:
            choices = [k for k in sorted(seen_keys) if k.startswith("eval/")] or sorted(seen_keys)
            choices = ", ".join(choices)
            raise ConfigError(f"metric {metric!r} is in no eval.jsonl; they have: {choices}")
        raise ConfigError(f"no run has an evaluation of {metric} yet")
    return methods


# ----------------------------------------------------------------------------------- curves


def common_grid(
    frames: Sequence[np.ndarray], step: float | None = None
) -> tuple[np.ndarray, float]:
    """(grid ``[G]``, tolerance) for runs evaluated at ``frames`` (each ``[E_i]``, increasing):
    evenly spaced by ``step`` (default: the median gap between consecutive evaluations) from
    the earliest first evaluation to the latest last one; a run counts at a grid point within
    ``tolerance`` (half a step) of its evaluated range. Runs of one evaluation each and no
    ``step``: the distinct frames, tolerance 0."""
    if step is not None and float(step) <= 0:
        raise ConfigError(
            f"grid_step must be > 0 (or null: the median gap between evaluations), got {step}"
        )
    gaps = np.concatenate([np.diff(f) for f in frames])
    if step is None:
        step = float(np.median(gaps)) if gaps.size else 0.0
    start, end = min(float(f[0]) for f in frames), max(float(f[-1]) for f in frames)
    if step <= 0:
        return np.unique(np.concatenate(frames)), 0.0
    n = max(int(round((end - start) / step)) + 1, 2 if end > start else 1)
    return np.linspace(start, end, n), step / 2


def on_grid(
    frames: np.ndarray, values: np.ndarray, grid: np.ndarray, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """(values ``[G]``, defined ``[G]`` bool) of one run read on ``grid``: linear
    interpolation inside its evaluated range, the end value within ``tolerance`` outside it,
    undefined (value 0) beyond."""
    defined = (grid >= frames[0] - tolerance) & (grid <= frames[-1] + tolerance)
    return np.where(defined, np.interp(grid, frames, values), 0.0), defined


def binned(
    frames: np.ndarray, values: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean value ``[K]``, non-empty ``[K]`` bool) of ``values`` in the ``K`` bins of frames
    between ``edges`` ``[K + 1]``."""
    idx = np.digitize(frames, edges) - 1
    inside = (idx >= 0) & (idx < len(edges) - 1)
    counts = np.bincount(idx[inside], minlength=len(edges) - 1)
    sums = np.bincount(idx[inside], weights=values[inside], minlength=len(edges) - 1)
    return np.divide(sums, counts, out=np.zeros(len(counts)), where=counts > 0), counts > 0


@dataclass
class Curve:
    """IQM over seeds at each point of ``frames`` ``[P]``, with its interval (``nan`` where
    fewer than two seeds reach a point) and the number of seeds there."""

    frames: np.ndarray  # [P]
    iqm: np.ndarray  # [P]
    low: np.ndarray  # [P]
    high: np.ndarray  # [P]
    seeds: np.ndarray  # [P] int

    def as_dict(self) -> dict:
        return {
            "frames": self.frames.tolist(),
            "iqm": self.iqm.tolist(),
            "low": _nan_to_none(self.low),
            "high": _nan_to_none(self.high),
            "seeds": self.seeds.tolist(),
        }


def curve(
    grid: np.ndarray,
    values: np.ndarray,
    defined: np.ndarray,
    reps: int,
    confidence: float,
    rng: np.random.Generator,
) -> Curve:
    """IQM and interval over runs at each grid point from ``values`` ``[R, G]`` where
    ``defined`` ``[R, G]``; points no run reaches are left out. Points reached by the same
    runs share one bootstrap (the same resampled seeds for all of them)."""
    seeds = defined.sum(0)
    keep = np.flatnonzero(seeds > 0)
    out = np.zeros(len(keep)), np.full(len(keep), np.nan), np.full(len(keep), np.nan)
    patterns: dict[tuple[bool, ...], list[int]] = {}
    for j, g in enumerate(keep):
        patterns.setdefault(tuple(defined[:, g]), []).append(j)
    for pattern, cols in patterns.items():
        scores = values[np.array(pattern)][:, keep[cols]]  # [R', C]
        out[0][cols] = iqm(scores)
        ci = interval([scores], iqm, reps, confidence, rng)
        if ci is not None:
            out[1][cols], out[2][cols] = ci
    return Curve(grid[keep], *out, seeds[keep])


# ------------------------------------------------------------------------------ the summary


@dataclass
class Estimate:
    """A statistic over seeds with its interval (``None``: one seed, no interval)."""

    value: float
    low: float | None
    high: float | None

    @classmethod
    def of(cls, samples, statistic, reps, confidence, rng) -> Estimate:
        value = float(statistic(*[np.asarray(s, dtype=float) for s in samples], axis=0))
        ci = interval(
            [np.asarray(s, dtype=float) for s in samples], statistic, reps, confidence, rng
        )
        return cls(value, *(None, None) if ci is None else (float(ci[0]), float(ci[1])))

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.value:.3g} (no interval: 1 seed)"
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


@dataclass
class MethodSummary:
    name: str
    runs: list[Run]
    curve: Curve
    train_curve: Curve | None
    final: Estimate  # IQM of each run's last evaluation
    final_mean: float
    best: Estimate  # IQM of each run's best evaluation

    def as_dict(self) -> dict:
        return {
            "runs": [str(r.path) for r in self.runs],
            "seeds": [r.seed for r in self.runs],
            "frames_reached": [float(r.frames[-1]) for r in self.runs],
            "final": [float(r.values[-1]) for r in self.runs],
            "best": [float(r.values.max()) for r in self.runs],
            "final_iqm": vars(self.final),
            "final_mean": self.final_mean,
            "best_iqm": vars(self.best),
            "curve": self.curve.as_dict(),
            "train_curve": None if self.train_curve is None else self.train_curve.as_dict(),
        }


@dataclass
class Summary:
    metric: str
    train_metric: str | None
    reps: int
    confidence: float
    methods: list[MethodSummary]
    #: (X, Y, P(X > Y) on the final evaluations)
    improvement: list[tuple[str, str, Estimate]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "metric": self.metric,
            "train_metric": self.train_metric,
            "bootstrap_reps": self.reps,
            "confidence": self.confidence,
            "methods": {m.name: m.as_dict() for m in self.methods},
            "probability_of_improvement": [
                {"x": x, "y": y, **vars(p)} for x, y, p in self.improvement
            ],
        }


def pairs(names: Sequence[str], compare) -> list[tuple[str, str]]:
    """The (X, Y) pairs of ``compare``: ``"all"`` every pair of ``names`` in their order,
    ``None`` none, a list of names every pair among them in its order."""
    if compare is None or compare == "none":
        return []
    if isinstance(compare, str) and compare != "all":
        compare = [compare]
    chosen = list(names) if compare == "all" else [str(c) for c in compare]
    unknown = [c for c in chosen if c not in names]
    if unknown:
        raise ConfigError(
            f"compare: no runs of {', '.join(unknown)}; the methods are {', '.join(names)}"
        )
    if compare != "all" and len(chosen) < 2:
        raise ConfigError(f"compare needs two methods, e.g. compare='[{names[0]},<other>]'")
    return list(itertools.combinations(chosen, 2))


def check_train_bin(train_bin) -> None:
    """Raise a :class:`ConfigError` naming ``train_bin`` unless it is ``None`` or a number of
    frames > 0 (0 was taken as ``None`` without a word, a negative width failed in numpy)."""
    if train_bin is None:
        return
    number = isinstance(train_bin, numbers.Real) and not isinstance(train_bin, bool)
    if not number or not 0 < float(train_bin) < float("inf"):
        raise ConfigError(
            "train_bin must be a number > 0 (frames per bin of the training panel), or null: "
            f"one grid step; got {train_bin!r}"
        )


def summarize(
    methods: dict[str, list[Run]],
    metric: str,
    train_metric: str | None = None,
    compare="all",
    reps: int = 2000,
    confidence: float = 0.95,
    grid_step: float | None = None,
    train_bin: float | None = None,
    seed: int = 0,
) -> Summary:
    """Curves, final performance and probabilities of improvement of ``methods``."""
    if int(reps) < 1:
        raise ConfigError(f"reps must be a whole number >= 1, got {reps}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (0.95 for 95%), got {confidence}")
    check_train_bin(train_bin)
    comparisons = pairs(list(methods), compare)
    rng = np.random.default_rng(seed)
    every = [r for runs in methods.values() for r in runs]
    grid, tolerance = common_grid([r.frames for r in every], grid_step)
    logged = [r.train[0][-1] for r in every if r.train is not None]  # last frame of each
    edges = None
    if logged:  # training bins: one grid step wide by default
        width = train_bin or (2 * tolerance if tolerance > 0 else max(grid[-1], 1.0) / 20)
        edges = width * np.arange(np.floor(max(logged) / width) + 2)  # the last frame inside
    out = []
    for name, runs in methods.items():
        read = [on_grid(r.frames, r.values, grid, tolerance) for r in runs]
        main = curve(grid, *map(np.stack, zip(*read, strict=True)), reps, confidence, rng)
        train_curve = None
        trained = [r.train for r in runs if r.train is not None]
        if edges is not None and trained:
            bins = [binned(f, v, edges) for f, v in trained]
            centres = (edges[:-1] + edges[1:]) / 2
            train_curve = curve(
                centres, *map(np.stack, zip(*bins, strict=True)), reps, confidence, rng
            )
        finals = np.array([r.values[-1] for r in runs])
        bests = np.array([r.values.max() for r in runs])
        out.append(
            MethodSummary(
                name,
                runs,
                main,
                train_curve,
                Estimate.of([finals], iqm, reps, confidence, rng),
                float(finals.mean()),
                Estimate.of([bests], iqm, reps, confidence, rng),
            )
        )
    finals = {m.name: np.array([r.values[-1] for r in m.runs]) for m in out}
    improvement = [
        (x, y, Estimate.of([finals[x], finals[y]], _poi, reps, confidence, rng))
        for x, y in comparisons
    ]
    return Summary(metric, train_metric, int(reps), confidence, out, improvement)


def _poi(x: np.ndarray, y: np.ndarray, axis: int = 0) -> np.ndarray:
    return probability_of_improvement(x, y, axis=axis)


def _nan_to_none(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in a]


# ----------------------------------------------------------------------------------- output


def _frames(x: float) -> str:
    return f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k" if x >= 1e3 else f"{x:.0f}"


def markdown(summary: Summary, command: str | None = None) -> str:
    """The final-performance table (and the probabilities of improvement) in markdown."""
    pct = f"{summary.confidence:.0%}"
    lines = []
    if command:
        lines += ["```bash", command, "```", ""]
    lines += [
        f'Final performance on `{summary.metric}`: each run\'s last evaluation ("final") and its '
        f'best one ("best"), aggregated over seeds: interquartile mean (IQM) with a {pct} '
        f"percentile-bootstrap interval over seeds ({summary.reps} resamples).",
        "",
        f"| method | seeds | frames reached | final IQM [{pct} CI] | final mean | "
        f"best IQM [{pct} CI] | final per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in summary.methods:
        reached = sorted({int(r.frames[-1]) for r in m.runs})
        reached = f"{reached[0]:,}" + (f" - {reached[-1]:,}" if len(reached) > 1 else "")
        seeds = ", ".join(
            f"{r.values[-1]:.3g}" + ("" if r.seed is None else f" (seed {r.seed})") for r in m.runs
        )
        lines.append(
            f"| {m.name} | {len(m.runs)} | {reached} | {m.final} | {m.final_mean:.3g} | {m.best} "
            f"| {seeds} |"
        )
    if any(len(m.runs) < 4 for m in summary.methods):
        lines += [
            "",
            "With fewer than 4 seeds the IQM cuts nothing (a quarter of 3 is less than one run): "
            "it is the mean.",
        ]
    if summary.improvement:
        lines += [
            "",
            f"Probability of improvement on the final evaluations, P(X > Y) (ties count half), "
            f"with a {pct} interval from resampling the seeds of X and of Y:",
            "",
            f"| X | Y | P(X > Y) [{pct} CI] |",
            "|---|---|---|",
        ]
        lines += [f"| {x} | {y} | {p} |" for x, y, p in summary.improvement]
    return "\n".join(lines) + "\n"


def _label(m: MethodSummary) -> str:
    n = len(m.runs)
    return f"{m.name} ({n} seed{'s' if n > 1 else ', no interval'})"


def _draw(ax, c: Curve, color, label) -> None:
    few = len(c.frames) <= 40  # few points: mark them
    ax.plot(c.frames, c.iqm, color=color, label=label, marker="o" if few else None, ms=3)
    has = np.isfinite(c.low)
    if has.any():
        ax.fill_between(c.frames, c.low, c.high, where=has, color=color, alpha=0.2, lw=0)


def plot(summary: Summary, path: Path, title: str | None = None):
    """Write the figure: IQM curves with intervals (evaluation metric; training metric when
    logged) and the final IQM per method with each seed's final value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    trained = any(m.train_curve is not None for m in summary.methods)
    widths = [3, 3, 2] if trained else [3, 2]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(4 * len(widths), 4), gridspec_kw={"width_ratios": widths}
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    pct = f"{summary.confidence:.0%}"
    name = summary.metric.removeprefix("eval/").replace("_", " ")
    for i, m in enumerate(summary.methods):
        color = colors[i % len(colors)]
        _draw(axes[0], m.curve, color, _label(m))
        if trained and m.train_curve is not None:
            _draw(axes[1], m.train_curve, color, _label(m))
        ax = axes[-1]
        finals = np.array([r.values[-1] for r in m.runs])
        err = None
        if m.final.low is not None:
            err = [[m.final.value - m.final.low], [m.final.high - m.final.value]]
        ax.errorbar([m.final.value], [i], xerr=err, fmt="o", color=color, capsize=4, ms=7)
        rows = i + np.linspace(0.15, 0.3, len(finals))  # one row per seed: equal values show
        ax.scatter(finals, rows, color=color, marker="x", s=20)
    axes[0].set(
        xlabel="env steps",
        ylabel=f"greedy evaluation {name}",
        title=f"evaluation: IQM, {pct} CI over seeds",
    )
    if trained:
        train = (summary.train_metric or "").replace("/", " ").replace("_", " ")
        axes[1].set(xlabel="env steps", ylabel=train, title="training, binned (IQM, CI)")
    ax = axes[-1]
    ax.set_yticks(range(len(summary.methods)), [m.name for m in summary.methods])
    ax.set_ylim(-0.5, len(summary.methods) - 0.5)
    ax.invert_yaxis()
    ax.set(xlabel=f"final {name}", title="final: IQM (o, CI), seeds (x)")
    for a in axes[:-1]:
        a.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _frames(x) if x else "0"))
        a.legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = [
    "Curve",
    "Estimate",
    "Run",
    "Summary",
    "check_train_bin",
    "common_grid",
    "curve",
    "find_runs",
    "interval",
    "iqm",
    "latest_segment",
    "load_runs",
    "markdown",
    "on_grid",
    "plot",
    "probability_of_improvement",
    "run_name",
    "summarize",
]
