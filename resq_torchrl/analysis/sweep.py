"""Summaries of matrix-game runs over many seeds: the markdown table and the heatmap grid."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from resq_torchrl.analysis.matrix import ACTION_NAMES, plot_heatmap


def summarize(results: list[dict]) -> dict:
    """Per-method statistics of matrix-game results (dicts of :func:`evaluate_matrix_game`
    plus ``algorithm`` and ``seed``)."""
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["algorithm"], []).append(r)
    summary = {}
    for method, runs in by_method.items():
        errs = [
            float((torch.tensor(r["q_jt"]) - torch.tensor(r["payoff"])).abs().max()) for r in runs
        ]
        optimal = [r["greedy_payoff"] == r["optimal_payoff"] for r in runs]
        greedy = Counter(tuple(r["greedy_action"]) for r in runs)
        summary[method] = {
            "runs": len(runs),
            "optimal": sum(optimal),
            "mean_greedy_payoff": sum(r["greedy_payoff"] for r in runs) / len(runs),
            "mean_max_abs_error": sum(errs) / len(runs),
            "igm_consistent": sum(r["igm_consistent"] for r in runs),
            "greedy_actions": {"".join(ACTION_NAMES[a] for a in k): v for k, v in greedy.items()},
        }
    return summary


def representative(runs: list[dict]) -> dict:
    """The lowest-seed run whose greedy joint action is the method's most frequent one."""
    modal = Counter(tuple(r["greedy_action"]) for r in runs).most_common(1)[0][0]
    return min((r for r in runs if tuple(r["greedy_action"]) == modal), key=lambda r: r["seed"])


def markdown_table(summary: dict) -> str:
    lines = [
        "| method | optimal greedy (seeds) | mean greedy payoff | mean max abs(Q_jt - payoff) "
        "| IGM consistent | greedy joint actions |",
        "|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        acts = ", ".join(f"{k}: {v}" for k, v in sorted(s["greedy_actions"].items()))
        lines.append(
            f"| {method} | {s['optimal']}/{s['runs']} | {s['mean_greedy_payoff']:.2f} | "
            f"{s['mean_max_abs_error']:.2f} | {s['igm_consistent']}/{s['runs']} | {acts} |"
        )
    return "\n".join(lines)


def save_heatmap_grid(results: list[dict], path: str | Path) -> Path:
    """One heatmap per method (its representative seed), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["algorithm"] for r in results))
    cols = min(4, len(methods))
    rows = (len(methods) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.0 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods, strict=False):
        rep = representative([r for r in results if r["algorithm"] == method])
        plot_heatmap(rep, ax=ax, title=f"{method} (seed {rep['seed']})")
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
