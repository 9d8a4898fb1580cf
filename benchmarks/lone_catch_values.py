"""Where a finished predator-prey run keeps the punishment of lone catches: ``Q_tot`` (what
the greedy policy follows) or ResQ's residual.

Reads a run's checkpoint and its checkpointed replay (``checkpoint_buffer=true``), unrolls
the loss's ``joint_q`` over replay episodes from their start, and averages, at the taken
joint actions, ``Q_tot``, ``Q_jt``, ``Q_tot - Q_jt`` (``-w_r Q_r`` for ResQ, 0 for methods
without a residual) and the share of non-greedy joint actions (``w_r``) over three kinds of
steps: lone-catch steps (team reward < 0: a punished catch, no capture), capture steps
(reward > 0) and the others (reward 0). Two samples of 48 episodes: the replay's newest
episodes and a seeded uniform draw. Writes JSON.

    python benchmarks/lone_catch_values.py runs/predator_prey_eps1000000/resq_seed2 \\
        --out docs/predator_prey_lone_catch/eps1000000_resq_seed2.json

A replay packed by ``benchmarks/learning_runs.sh`` (``replay.tar.zst``) must be unpacked
first (``tar -C <dir> -I zstd -xf replay.tar.zst``, then ``--replay <dir>/replay``).
(Written by hand: a read-out of this project's losses, nothing in torchrl does it.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from resq_torchrl.data.episodes import EpisodeReplayBuffer
from resq_torchrl.errors import ConfigError, check_writable
from resq_torchrl.training.builders import env_dims, env_family, make_env, make_loss
from resq_torchrl.training.evaluation import load_run

KINDS = ("lone_catch", "capture", "other")
NAMES = ("q_tot", "q_jt", "q_tot_minus_q_jt", "non_greedy_share")


@torch.no_grad()
def step_values(loss, episodes) -> dict[str, torch.Tensor]:
    """``{kind: [S, 4]}``: ``Q_tot``, ``Q_jt``, ``Q_tot - Q_jt``, ``w_r`` at the real steps
    of each kind in ``episodes`` ``[E, T]``."""
    joint = loss.joint_q(episodes)
    q_tot, q_jt = joint["q_tot"].squeeze(-1), joint["q_jt"].squeeze(-1)
    w_r = joint.get("w_r", None)
    w_r = torch.zeros_like(q_tot) if w_r is None else w_r.squeeze(-1).to(q_tot.dtype)
    real = episodes.get(("collector", "mask")).bool()
    reward = episodes.get(("next", "reward")).squeeze(-1)
    masks = {"lone_catch": reward < 0, "capture": reward > 0, "other": reward == 0}
    values = torch.stack([q_tot, q_jt, q_tot - q_jt, w_r], -1)
    return {k: values[real & m] for k, m in masks.items()}


def summarize(rows: list[dict[str, torch.Tensor]]) -> dict:
    out = {}
    for kind in KINDS:
        v = torch.cat([r[kind] for r in rows])
        n = int(v.shape[0])
        means = v.mean(0).tolist() if n else [None] * 4
        out[kind] = {"steps": n} | {
            name: None if m is None else round(m, 3) for name, m in zip(NAMES, means, strict=True)
        }
    return out


def lone_catch_values(
    run: Path, replay: Path, episodes: int = 48, seed: int = 0, state: dict | None = None
) -> dict:
    """``state``: the run's loaded checkpoint, when the caller has it already."""
    if state is None:
        _, state = load_run(run)
    cfg = state["config"]
    env = make_env(cfg["env"], 1, "cpu", seed=0)
    loss = make_loss(cfg["algorithm"], cfg["agent"], env_dims(env), "cpu")
    loss.load_state_dict(state["loss"])
    buffer = EpisodeReplayBuffer(
        cfg["buffer_episodes"],
        cfg["env"]["max_steps"],
        1,
        prioritized=bool(cfg.get("prioritized_replay", False)),
    )
    buffer.loads(replay)
    n = len(buffer)
    k = min(episodes, n)
    samples = {
        "newest": torch.arange(n - k, n),
        "uniform": torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k],
    }
    out = {
        "run": str(run),
        "algorithm": cfg["algorithm"].get("name"),
        "checkpoint_frames": state.get("frames"),
        "episodes_in_replay": n,
    }
    for name, index in samples.items():
        out[name] = summarize([step_values(loss, buffer.episodes(c)) for c in index.split(16)])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run's output_dir (with checkpoint.pt)")
    parser.add_argument("--replay", type=Path, help="its replay dump (default: RUN/replay)")
    parser.add_argument("--episodes", type=int, default=48, help="episodes per sample")
    parser.add_argument("--out", type=Path, help="JSON output (default: stdout)")
    args = parser.parse_args(argv)
    try:
        check_writable("--out", args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    replay = args.replay or args.run / "replay"
    if not (replay / "episodes.json").exists():
        packed = args.run / "replay.tar.zst"
        hint = f" (unpack {packed} first)" if packed.exists() else ""
        print(f"error: no replay dump at {replay}{hint}", file=sys.stderr)
        return 2
    try:
        _, state = load_run(args.run)
    except ConfigError as err:  # no checkpoint, or not one of scripts/train.py
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = state["config"].get("env") or {}
    if env_family(env) != "predator_prey":
        parser.error(
            f"{args.run} is a run on {env.get('name')!r}: lone catches exist in predator_prey "
            "runs only"
        )
    try:
        values = lone_catch_values(args.run, replay, args.episodes, state=state)
    except (KeyError, ValueError, OSError) as err:  # a dump cut short or of another run
        print(
            f"error: {replay} is not a readable replay dump of {args.run} "
            f"({type(err).__name__}: {err})",
            file=sys.stderr,
        )
        return 2
    result = json.dumps(values, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result + "\n")
        print(f"wrote {args.out}")
    else:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
