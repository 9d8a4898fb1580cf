"""Plot learning curves (mean and min-max over seeds) of train.py runs.

    python scripts/plot_curves.py runs/predator_prey/*_seed* --out docs/predator_prey.png
    python scripts/plot_curves.py runs/smax/3m/*_seed* --metric eval/win_rate --out docs/smax_3m.png

Runs are grouped by the name before ``_seed``. Left: a greedy evaluation metric
(``eval.jsonl``, ``--metric``, default ``eval/return``); right: training-episode return (the
CSV logger's ``train/return``), binned over env steps.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def latest_segment(frames: np.ndarray) -> np.ndarray:
    """Indices of the rows to keep when a run was resumed from a checkpoint after logging
    further: a row is dropped when a later row has the same or fewer frames (the resumed run
    redid that stretch)."""
    keep, lowest = [], np.inf
    for i in range(len(frames) - 1, -1, -1):
        if frames[i] < lowest:
            keep.append(i)
            lowest = frames[i]
    return np.array(keep[::-1], dtype=int)


def load_eval(run: Path, metric: str = "eval/return") -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if line]
    rows = [rows[i] for i in latest_segment(np.array([r["frames"] for r in rows]))]
    if rows and metric not in rows[0]:
        raise SystemExit(f"{run}/eval.jsonl has no {metric!r}; it has {sorted(rows[0])}")
    return np.array([r["frames"] for r in rows]), np.array([r[metric] for r in rows])


def load_train(run: Path, bins: np.ndarray) -> np.ndarray | None:
    """Mean training return in each bin of env steps (NaN where a bin has no episode)."""
    files = list(run.glob("*/scalars/train/return.csv"))
    if not files:
        return None
    data = np.loadtxt(files[0], delimiter=",", ndmin=2)
    data = data[latest_segment(data[:, 0])]
    idx = np.digitize(data[:, 0], bins) - 1
    return np.array(
        [data[idx == i, 1].mean() if (idx == i).any() else np.nan for i in range(len(bins) - 1)]
    )


def label(name: str, seeds: int) -> str:
    return f"{name} ({seeds} seed{'s' if seeds > 1 else ''})"


def band(ax, x, values, label):
    ax.plot(x, np.nanmean(values, 0), label=label)
    ax.fill_between(x, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--bin", type=int, default=None, help="env steps per training bin (default: 1/20 of a run)"
    )
    parser.add_argument("--metric", default="eval/return", help="eval.jsonl key to plot")
    parser.add_argument("--title", default=None, help="figure title")
    args = parser.parse_args()
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in args.runs:
        if (run / "eval.jsonl").exists():
            groups[run.name.split("_seed")[0]].append(run)
    if not groups:
        raise SystemExit("no run with an eval.jsonl among the given directories")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    summary = {}
    for name, runs in sorted(groups.items()):
        curves = [load_eval(r, args.metric) for r in runs]
        n = min(len(x) for x, _ in curves)
        frames, values = curves[0][0][:n], np.stack([y[:n] for _, y in curves])
        band(left, frames, values, label(name, len(runs)))
        width = args.bin or max(1, int(frames[-1]) // 20)
        bins = np.arange(0, frames[-1] + width, width)
        train = [t for t in (load_train(r, bins) for r in runs) if t is not None]
        if train:
            band(right, bins[:-1] + width / 2, np.stack(train), label(name, len(train)))
        summary[name] = {
            "seeds": len(runs),
            "frames": int(frames[-1]),
            "metric": args.metric,
            "final_mean": float(values[:, -1].mean()),
            "final_per_seed": values[:, -1].round(3).tolist(),
            "best_mean": float(values.mean(0).max()),
        }
    ylabel = "greedy evaluation " + args.metric.removeprefix("eval/").replace("_", " ")
    left.set(xlabel="env steps", ylabel=ylabel, title="evaluation")
    right.set(xlabel="env steps", ylabel="training episode return", title="training (binned)")
    for ax in (left, right):
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1e3:g}k"))
        ax.legend()
        ax.grid(alpha=0.3)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
