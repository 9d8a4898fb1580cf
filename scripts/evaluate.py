"""Greedy evaluation of a checkpoint written by scripts/train.py.

python scripts/evaluate.py output_dir=runs/resq_predator_prey_seed0 episodes=64

Prints the result as JSON on stdout and writes nothing.
"""

from __future__ import annotations

import json

from omegaconf import DictConfig

from resq_torchrl import cli
from resq_torchrl.training.trainer import evaluate_checkpoint


@cli.main("evaluate", auto_threads={"cpu": 1, "cuda": 1})
def main(cfg: DictConfig) -> None:
    result = evaluate_checkpoint(cfg.output_dir, int(cfg.episodes), cfg.device, int(cfg.seed))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
