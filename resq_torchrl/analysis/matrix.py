"""Learned joint-value tables of one-step matrix games: evaluation, IGM check, rendering."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from resq_torchrl.envs import MatrixGameEnv
from resq_torchrl.objectives import ValueFactorizationLoss

ACTION_NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: fractions at which distributional methods are evaluated (evenly spaced midpoints)
EVAL_FRACTIONS = 32


def igm_consistent(q_jt: torch.Tensor, greedy_action: list[int] | tuple[int, ...]) -> bool:
    """Whether the agents' greedy tuple is an argmax of ``q_jt`` (shape ``[A] * n``)."""
    q_jt = torch.as_tensor(q_jt)
    return bool(q_jt[tuple(greedy_action)] >= q_jt.max())


@torch.no_grad()
def evaluate_matrix_game(loss: ValueFactorizationLoss, payoff: torch.Tensor) -> dict:
    """Evaluate a trained loss on every joint action of the game ``payoff`` (``[A] * n``).

    Returns a JSON-ready dict: ``payoff``, ``q_agents`` (per agent, ``A`` utilities),
    ``greedy_action``, ``greedy_payoff``, ``optimal_payoff``, ``q_jt``, ``q_tot``, ``q_r``
    (``None`` without a residual) and ``igm_consistent``; tables are nested lists ``[A] * n``.
    Distributional losses are read at :data:`EVAL_FRACTIONS` fixed fractions (``q_*`` are
    then expectations) and add ``z_jt_quantiles`` (the fractions and ``Z_jt`` of the greedy
    cell) and, with a residual, ``z_r_max`` (the largest residual quantile of any cell).
    """
    payoff = torch.as_tensor(payoff, dtype=torch.float64)
    device = next(loss.parameters()).device
    shape = tuple(payoff.shape)
    n_joint = payoff.numel()
    env = MatrixGameEnv(payoff, batch_size=[n_joint], device=device)
    td = env.reset()
    td.set(("agents", "action"), env.joint_actions())
    td = env.step(td)
    fractions_key = getattr(loss.tensor_keys, "fractions", None)
    if fractions_key is not None:
        # distributions are read at fixed, evenly spaced fractions: means are then the
        # midpoint rule over [0, 1] rather than a random 8-fraction estimate
        k = EVAL_FRACTIONS
        mid = (torch.arange(k, dtype=torch.float32, device=device) + 0.5) / k
        td.set(fractions_key, mid.expand(n_joint, k))
    joint = loss.joint_q(td)

    q_agents = joint.get("action_value")[0]  # one state: the same utilities in every sample
    greedy = joint.get("greedy_action")[0].tolist()
    q_jt = joint.get("q_jt").reshape(shape).cpu()
    q_r = joint.get("q_r", None)
    result = {
        "payoff": payoff.tolist(),
        "q_agents": q_agents.cpu().tolist(),
        "greedy_action": greedy,
        "greedy_payoff": float(payoff[tuple(greedy)]),
        "optimal_payoff": float(payoff.max()),
        "q_jt": q_jt.tolist(),
        "q_tot": joint.get("q_tot").reshape(shape).cpu().tolist(),
        "q_r": None if q_r is None else q_r.reshape(shape).cpu().tolist(),
        "igm_consistent": igm_consistent(q_jt, greedy),
    }
    if fractions_key is not None:
        z_jt = joint.get("z_jt").reshape(*shape, -1).cpu()
        result["z_jt_quantiles"] = {
            "fractions": td.get(fractions_key)[0].cpu().tolist(),
            "greedy_cell": z_jt[tuple(greedy)].tolist(),
        }
        z_r = joint.get("z_r", None)
        if z_r is not None:
            result["z_r_max"] = float(z_r.max())
    return result


def format_table(result: dict, digits: int = 2) -> str:
    """The paper-style table: agent utilities on the margins, ``Q_jt`` in the cells, the
    greedy joint action marked ``[...]``. Games with more than two agents are listed by joint
    action instead."""
    q_jt = torch.tensor(result["q_jt"])
    q_agents = result["q_agents"]
    greedy = tuple(result["greedy_action"])
    n_actions = q_jt.shape[0]
    names = ACTION_NAMES[:n_actions]

    def cell(value: float, mark: bool) -> str:
        s = f"{value:.{digits}f}"
        return f"[{s}]" if mark else f" {s} "

    lines = []
    if q_jt.dim() == 2:
        w = 10
        lines.append(
            "Q_1 \\ Q_2".ljust(14)
            + "".join(f"{names[j]} {q:.{digits}f}".rjust(w) for j, q in enumerate(q_agents[1]))
        )
        for i in range(n_actions):
            row = f"{names[i]} {q_agents[0][i]:.{digits}f}".ljust(14)
            row += "".join(
                cell(float(q_jt[i, j]), (i, j) == greedy).rjust(w) for j in range(n_actions)
            )
            lines.append(row)
    else:
        for i, q in enumerate(q_agents):
            lines.append(
                f"Q_{i + 1}: " + ", ".join(f"{names[a]}={v:.{digits}f}" for a, v in enumerate(q))
            )
        for u in itertools.product(range(n_actions), repeat=q_jt.dim()):
            mark = " <- greedy" if u == greedy else ""
            lines.append("".join(names[a] for a in u) + f": {float(q_jt[u]):.{digits}f}{mark}")
    lines.append(
        f"greedy joint action {''.join(names[a] for a in greedy)}: payoff "
        f"{result['greedy_payoff']:g} (optimum {result['optimal_payoff']:g}); "
        f"IGM consistent: {result['igm_consistent']}"
    )
    return "\n".join(lines)


def plot_heatmap(result: dict, ax=None, title: str | None = None):
    """Draw ``Q_jt`` of a 2-agent game as a heatmap with the utilities on the margins and the
    greedy cell outlined. Returns the matplotlib ``Axes``."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    q_jt = torch.tensor(result["q_jt"])
    if q_jt.dim() != 2:
        raise ValueError(f"heatmaps need a 2-agent game, this one has {q_jt.dim()} agents")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 3.8))
    n = q_jt.shape[0]
    names = ACTION_NAMES[:n]
    q1, q2 = result["q_agents"]
    lim = float(q_jt.abs().max())
    ax.imshow(q_jt.numpy(), cmap="RdYlGn", vmin=-lim, vmax=lim)
    for i in range(n):
        for j in range(n):
            value = float(q_jt[i, j])
            color = "white" if abs(value) > 0.6 * lim else "black"  # readable on dark cells
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=9, color=color)
    gi, gj = result["greedy_action"]
    ax.add_patch(Rectangle((gj - 0.5, gi - 0.5), 1, 1, fill=False, lw=3, ec="black"))
    ax.set_xticks(range(n), [f"{a}\n{q:.2f}" for a, q in zip(names, q2, strict=True)])
    ax.set_yticks(range(n), [f"{a}  {q:.2f}" for a, q in zip(names, q1, strict=True)])
    ax.set_xlabel("agent 2 action, Q_2")
    ax.set_ylabel("agent 1 action, Q_1")
    if title:
        ax.set_title(title)
    return ax


def save_heatmap(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`plot_heatmap` of ``result`` to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    plot_heatmap(result, ax=ax, title=title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
