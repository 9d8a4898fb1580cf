"""Plot greedy-evaluation curves (mean and min-max over seeds) of train.py runs.

    python scripts/plot_curves.py runs/predator_prey/*_seed* --out docs/predator_prey.png

Runs are grouped by the name before ``_seed``; each run directory holds ``eval.jsonl``.
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


def load(run: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if line]
    rows = [r for r in rows if metric in r]
    return np.array([r["frames"] for r in rows]), np.array([r[metric] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metric", default="eval/return")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in args.runs:
        if (run / "eval.jsonl").exists():
            groups[run.name.split("_seed")[0]].append(run)
    if not groups:
        raise SystemExit("no run with an eval.jsonl among the given directories")
    fig, ax = plt.subplots(figsize=(6, 4))
    summary = {}
    for name, runs in sorted(groups.items()):
        curves = [load(r, args.metric) for r in runs]
        n = min(len(x) for x, _ in curves)
        frames = curves[0][0][:n]
        values = np.stack([y[:n] for _, y in curves])
        ax.plot(frames, values.mean(0), label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(frames, values.min(0), values.max(0), alpha=0.2)
        summary[name] = {
            "seeds": len(runs),
            "frames": int(frames[-1]),
            "final_mean": float(values[:, -1].mean()),
            "final_per_seed": values[:, -1].round(3).tolist(),
        }
    ax.set_xlabel("env steps")
    ax.set_ylabel(args.metric)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
