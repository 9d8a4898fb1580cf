"""Greedy evaluation of a trained run: per-episode returns and their statistics.

``scripts/evaluate.py`` calls :func:`evaluate_run`: it rebuilds the run's env, loss and
policy from the config stored in its checkpoint, plays ``episodes`` greedy episodes (one per
env of a batched env of ``n_envs`` copies, in as many batches as needed) and summarises the
returns over episodes with :func:`episode_statistics`:

- ``mean`` and ``std`` (sample standard deviation, ``ddof=1``);
- ``iqm``: the interquartile mean, the mean of the middle 50% of the returns (scipy's
  ``trim_mean(x, 0.25)``: ``floor(n / 4)`` episodes cut from each end, the same number as
  rliable's ``metrics.aggregate_iqm``), robust to a few outlying episodes;
- a ``confidence`` (95%) percentile bootstrap interval of the mean and of the IQM over
  episodes (``scipy.stats.bootstrap``, ``resamples`` resamples, seeded: the same returns
  give the same interval);
- for envs with a win key (SMAC, SMACv2, SMAX), the win rate and its interval.

One episode has no spread and no interval: those fields are ``None`` and ``note`` says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from resq_torchrl.errors import CheckpointNotFoundError, ConfigError
from resq_torchrl.training.builders import check_device, env_dims, make_env, make_loss
from resq_torchrl.training.checkpoint import EVALUATION_JSON, load_checkpoint
from resq_torchrl.training.trainer import (
    CHECKPOINT,
    add_agent_transforms,
    greedy_episodes,
    make_policies,
)

#: events an env may record per step (``event_log``, predator-prey), summed per episode
EVENTS = ("captures", "lone_catches")
#: the most envs one batch of evaluation episodes steps at once (``n_envs=null``)
DEFAULT_MAX_ENVS = 256


def checkpoint_path(output_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """``checkpoint`` if given, else ``output_dir/checkpoint.pt``; a
    :class:`CheckpointNotFoundError` when the file is not there."""
    path = Path(checkpoint) if checkpoint else Path(output_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"no checkpoint at {path}: train with output_dir={output_dir} first"
            + ("" if checkpoint else ", or give checkpoint=PATH")
        )
    return path


def load_run(output_dir: str | Path, checkpoint: str | Path | None = None) -> tuple[Path, dict]:
    """(path, state) of the run's checkpoint (:func:`checkpoint_path`), loaded on CPU."""
    path = checkpoint_path(output_dir, checkpoint)
    return path, load_checkpoint(path, map_location="cpu")  # weights_only: plain data


# ------------------------------------------------------------------------------- statistics


def _iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import trim_mean

    return trim_mean(x, 0.25, axis=axis)


def _interval(
    x: np.ndarray, statistic, confidence: float, resamples: int, seed: int
) -> list[float]:
    """Percentile bootstrap interval ``[low, high]`` of ``statistic`` over the entries of
    ``x`` ``[n]`` (``n >= 2``)."""
    from scipy.stats import bootstrap

    result = bootstrap(
        (x,),
        statistic,
        n_resamples=int(resamples),
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
    )
    ci = result.confidence_interval
    # inside [min, max] as any resample's mean or IQM is (rounding can step out by an ulp)
    return [float(np.clip(ci.low, x.min(), x.max())), float(np.clip(ci.high, x.min(), x.max()))]


def episode_statistics(
    values: Sequence[float] | np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Mean, std, IQM, min, max and bootstrap intervals of the mean and the IQM of one
    number per episode ``values`` ``[n]`` (see the module docstring).

    Returns ``{"n", "mean", "std", "iqm", "min", "max", "mean_ci", "iqm_ci", "note"}``: the
    intervals ``[low, high]``; with ``n == 1``, ``std`` and both intervals are ``None`` and
    ``note`` says why (otherwise ``note`` is ``None``).

    Raises:
        ValueError: no values, a non-finite value, or ``confidence`` outside ``(0, 1)``.
    """
    x = np.asarray(
        values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64
    ).reshape(-1)
    if x.size == 0:
        raise ValueError("no episodes to summarise: evaluate at least 1 episode (episodes>=1)")
    if not np.isfinite(x).all():
        raise ValueError(f"an episode's value is not finite: {x.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    out = {
        "n": int(x.size),
        "mean": float(x.mean()),
        "std": None,
        "iqm": float(_iqm(x)),
        "min": float(x.min()),
        "max": float(x.max()),
        "mean_ci": None,
        "iqm_ci": None,
        "note": None,
    }
    if x.size == 1:
        out["note"] = "1 episode: no spread and no interval; evaluate episodes>=2 for them"
        return out
    out["std"] = float(x.std(ddof=1))
    out["mean_ci"] = _interval(x, np.mean, confidence, resamples, seed)
    out["iqm_ci"] = _interval(x, _iqm, confidence, resamples, seed)
    return out


# --------------------------------------------------------------------------------- episodes


def build_policy(state: Mapping, n_envs: int, device, seed: int):
    """(env, greedy policy, config) of the run stored in the checkpoint ``state``: an env of
    ``n_envs`` copies seeded with ``seed``, the loss's agents with the checkpoint's
    parameters."""
    cfg = state["config"]
    torch.manual_seed(seed)  # some simulators draw from torch's global generator
    env = make_env(cfg["env"], n_envs, device, seed=seed)
    loss = make_loss(cfg["algorithm"], cfg["agent"], env_dims(env), device)
    loss.load_state_dict(state["loss"])
    add_agent_transforms(env, loss)
    policy, _ = make_policies(loss, env, cfg["exploration"])
    return env, policy, cfg


def evaluate_run(
    output_dir: str | Path,
    episodes: int = 32,
    device: str | None = None,
    seed: int = 0,
    n_envs: int | None = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    checkpoint: str | Path | None = None,
    loaded: tuple[Path, dict] | None = None,
) -> dict:
    """Greedy evaluation of the run in ``output_dir`` over ``episodes`` episodes (its
    checkpoint, or ``checkpoint``; ``loaded``: what :func:`load_run` returned for it).

    The episodes are played ``n_envs`` at a time (default ``min(episodes, 256)``), one per
    env of a batched env seeded with ``seed``; later batches continue its random streams.

    Returns a JSON-ready dict: ``checkpoint`` (its path), ``checkpoint_frames``,
    ``checkpoint_updates``, ``seed``, ``episodes`` (completed episodes), ``return``
    (:func:`episode_statistics` of the returns), ``win_rate`` (the same over 0/1 wins, envs
    with a win key only), ``confidence``, ``bootstrap``, per-episode ``returns``,
    ``lengths`` (and ``wins``), ``notes`` (e.g. a checkpoint made before any update), and
    the keys of the trainer's evaluations: ``eval/return``, ``eval/episodes``
    (``eval/win_rate``). For an env that records events (predator-prey), also per
    :data:`EVENTS` name (``captures``, ``lone_catches``): its statistics per episode, the
    per-episode counts (``<name>_per_episode``) and ``eval/<name>``."""
    episodes = int(episodes)
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    n_envs = min(episodes, DEFAULT_MAX_ENVS) if n_envs is None else int(n_envs)
    if n_envs < 1:
        raise ConfigError(f"n_envs must be >= 1 (or null: min(episodes, 256)), got {n_envs}")
    n_envs = min(n_envs, episodes)
    path, state = loaded or load_run(output_dir, checkpoint)
    cfg = state["config"]
    device = check_device(device or cfg["device"])
    env, policy, cfg = build_policy(state, n_envs, device, seed)
    max_steps, win_key = int(cfg["env"]["max_steps"]), cfg["env"].get("win_key")

    parts: list[dict[str, torch.Tensor]] = []
    for _ in range(math.ceil(episodes / n_envs)):  # later batches: the env's streams go on
        parts.append(greedy_episodes(env, policy, max_steps, win_key))
    env.close()
    played = {k: torch.cat([p[k] for p in parts])[:episodes] for k in parts[0]}
    done = played["completed"]
    returns = played["returns"][done]
    notes = []
    if not bool(done.all()):
        notes.append(
            f"{int((~done).sum())} of {episodes} episodes did not end within "
            f"max_steps={max_steps}: left out"
        )
    if state.get("updates") == 0:
        notes.append("the checkpoint was saved before any update: these are untrained networks")
    stats = episode_statistics(returns, confidence, resamples, seed)
    result = {
        "checkpoint": str(path),
        "checkpoint_frames": state.get("frames"),
        "checkpoint_updates": state.get("updates"),
        "algorithm": cfg["algorithm"].get("name"),
        "env": cfg["env"].get("name"),
        "seed": seed,
        "episodes": int(done.sum()),
        "eval/return": stats["mean"],
        "eval/episodes": int(done.sum()),
        "return": stats,
        "confidence": confidence,
        "bootstrap": {"method": "percentile", "resamples": int(resamples), "seed": seed},
    }
    if "won" in played:
        wins = played["won"][done].float()
        result["win_rate"] = episode_statistics(wins, confidence, resamples, seed)
        result["eval/win_rate"] = result["win_rate"]["mean"]
    for name in EVENTS:  # envs that record events (predator-prey): counts per episode
        if name in played:
            counts = played[name][done].float()
            result[name] = episode_statistics(counts, confidence, resamples, seed)
            result[f"eval/{name}"] = result[name]["mean"]
            result[f"{name}_per_episode"] = played[name][done].tolist()
    result["notes"] = notes + ([stats["note"]] if stats["note"] else [])
    result["returns"] = returns.tolist()
    result["lengths"] = played["lengths"][done].tolist()
    if "won" in played:
        result["wins"] = played["won"][done].tolist()
    return result


def format_table(result: Mapping) -> str:
    """A short plain-text table of :func:`evaluate_run`'s statistics."""

    def num(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    def ci(v) -> str:
        return "-" if v is None else f"[{v[0]:.3f}, {v[1]:.3f}]"

    level = f"{100 * result['confidence']:g}%"
    rows = [("", "mean", "std", "IQM", f"mean {level} CI", f"IQM {level} CI", "min", "max")]
    for name in ("return", "win_rate", *EVENTS):
        s = result.get(name)
        if s is not None:
            rows.append(
                (name, num(s["mean"]), num(s["std"]), num(s["iqm"]))
                + (ci(s["mean_ci"]), ci(s["iqm_ci"]), num(s["min"]), num(s["max"]))
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        f"{result['algorithm']} on {result['env']}: {result['episodes']} greedy episodes, "
        f"checkpoint at {result['checkpoint_frames']} frames, seed {result['seed']}"
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


__all__ = [
    "EVALUATION_JSON",
    "checkpoint_path",
    "load_run",
    "episode_statistics",
    "greedy_episodes",
    "build_policy",
    "evaluate_run",
    "format_table",
]
