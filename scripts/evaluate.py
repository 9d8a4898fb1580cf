"""Greedy evaluation of a checkpoint written by scripts/train.py.

    python scripts/evaluate.py output_dir=runs/resq_predator_prey_seed0 episodes=64
    python scripts/evaluate.py output_dir=runs/resq_predator_prey_seed0 render=true

Plays ``episodes`` greedy episodes and reports the mean, std and interquartile mean (IQM) of
their returns with 95% bootstrap intervals of the mean and of the IQM (and the win rate where
the env has one): a table on stderr, the summary as JSON on stdout, and the full record (with
every episode's return) in ``output_dir/evaluation.json`` (``json_out=``). ``render=true``
also writes ``render_episodes`` greedy episodes as ``output_dir/render/episode_<i>.gif``
(predator-prey, the matrix game, VMAS; ``render_format=mp4`` with ffmpeg).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from omegaconf import DictConfig

from resq_torchrl import cli
from resq_torchrl.errors import ConfigError, at_least, check_writable
from resq_torchrl.training.checkpoint import is_run_checkpoint
from resq_torchrl.training.evaluation import (
    EVALUATION_JSON,
    evaluate_run,
    format_table,
    load_run,
)
from resq_torchrl.training.trainer import RUN_FILES

#: per-episode lists: in the JSON file, left out of the summary on stdout
PER_EPISODE = ("returns", "lengths", "wins", "captures_per_episode", "lone_catches_per_episode")


def check_own_checkpoint(cfg: DictConfig) -> None:
    """A ``checkpoint=`` that is not one of ``output_dir``'s (its ``checkpoint.pt``, its
    ``checkpoints/``) would write its evaluation (and videos) as ``output_dir``'s: refused
    unless ``json_out=`` (and, with ``render=true``, ``render_dir=``) say where they go."""
    if not cfg.checkpoint:
        return
    if is_run_checkpoint(cfg.checkpoint, cfg.output_dir):
        return
    missing = [
        k for k in ("json_out", "render_dir") if not cfg[k] and (k == "json_out" or cfg.render)
    ]
    if missing:
        raise ConfigError(
            f"checkpoint={cfg.checkpoint} is not a file of output_dir={cfg.output_dir}: its "
            f"evaluation would be written as that run's; set output_dir to the checkpoint's "
            f"run, or say where it goes with {' and '.join(f'{k}=' for k in missing)}"
        )


@cli.main("evaluate", auto_threads={"cpu": 1, "cuda": 1})
def main(cfg: DictConfig) -> None:
    loaded = load_run(cfg.output_dir, cfg.checkpoint)
    check_own_checkpoint(cfg)
    out = Path(cfg.json_out or Path(cfg.output_dir) / EVALUATION_JSON)
    if out.is_dir():  # checked before the evaluation, which it would otherwise lose
        raise ConfigError(f"json_out={out} is a directory: give a file path, e.g. {out}/eval.json")
    run_files = [Path(cfg.output_dir) / name for name in RUN_FILES]
    if cfg.checkpoint:
        run_files.append(Path(cfg.checkpoint))
    if any(out.resolve() == f.resolve() for f in run_files):
        raise ConfigError(
            f"json_out={out} is one of the run's own files ({', '.join(RUN_FILES)}, the "
            f"checkpoint): choose another path, e.g. the default {EVALUATION_JSON}"
        )
    check_writable("json_out", out)
    at_least("seed", cfg.seed, 0)  # the env's seeding takes no negative seed
    if int(cfg.bootstrap_resamples) < 1:
        raise ConfigError(f"bootstrap_resamples must be >= 1, got {cfg.bootstrap_resamples}")
    if cfg.render:  # a render that cannot work fails before the evaluation
        from resq_torchrl.render import check_render
        from resq_torchrl.training.builders import env_family

        check_render(env_family(loaded[1]["config"]["env"]), cfg.render_format)
    result = evaluate_run(
        cfg.output_dir,
        episodes=int(cfg.episodes),
        device=cfg.device,
        seed=int(cfg.seed),
        n_envs=cfg.n_envs,
        confidence=float(cfg.confidence),
        resamples=int(cfg.bootstrap_resamples),
        loaded=loaded,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(format_table(result), file=sys.stderr)
    print(json.dumps({k: v for k, v in result.items() if k not in PER_EPISODE}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    if cfg.render:
        from resq_torchrl.render import render_run

        paths = render_run(
            cfg.output_dir,
            episodes=int(cfg.render_episodes),
            fmt=cfg.render_format,
            fps=float(cfg.render_fps),
            device=cfg.device,
            seed=int(cfg.seed),
            out_dir=cfg.render_dir,
            loaded=loaded,
        )
        names = ", ".join(p.name for p in paths)
        print(f"wrote {len(paths)} video(s) to {paths[0].parent}/: {names}", file=sys.stderr)


if __name__ == "__main__":
    main()
