"""Train a value-factorization method on an environment.

    python scripts/train.py algorithm=resq env=predator_prey seed=0 total_frames=300000
    python scripts/train.py algorithm=qmix env=matrix_game total_frames=20000 output_dir=/tmp/mg

Scalars go to ``output_dir`` through torchrl's logger (CSV by default), greedy evaluations to
``output_dir/eval.jsonl``, the final one to ``output_dir/final.json``; ``resume=true``
continues from ``output_dir/checkpoint.pt``. A mistake in the settings ends the run with one
``error:`` line and exit code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.training.builders import env_family
from resq_torchrl.training.trainer import train


def auto_cpu_threads(cfg) -> tuple[int, str]:
    """``threads=auto`` on the CPU: every usable core for a training with the single
    collector; one for the matrix game (networks too small to share between threads: twice
    the CPU for no gain) and beside the worker processes of the multi-process collectors
    (each worker takes the training process's thread count). Measured 1 against 2 threads
    in ``docs/speed.md``, "Threads"."""
    if env_family(cfg.get("env") or {}) == "matrix_game":
        return 1, "1 for the matrix game's tiny networks"
    collector = str((cfg.get("collector") or {}).get("type", "single"))
    if collector != "single":
        return 1, f"1 beside collector={collector}'s worker processes"
    n = cli.usable_cores()
    return n, f"the {n} usable cores"


@cli.main("train", auto_threads={"cpu": auto_cpu_threads, "cuda": 1})
def main(cfg: DictConfig) -> None:
    final = train(OmegaConf.to_container(cfg, resolve=True))
    print(f"final evaluation ({cfg.algorithm.name} on {cfg.env.name}, seed {cfg.seed}):")
    print(json.dumps(final, indent=2))
    out = cfg.output_dir
    print(
        f"outputs in {out}/: checkpoint.pt, eval.jsonl, final.json, {cfg.logger} logs"
        + (", replay/" if (Path(out) / "replay").exists() else "")
    )
    print(
        f"done: {final['frames']} frames (total_frames={cfg.total_frames}), "
        f"{final['episodes']} episodes, {final['updates']} updates in {final['seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
