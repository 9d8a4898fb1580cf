"""Train a value-factorization method on an environment.

    python scripts/train.py algorithm=resq env=predator_prey seed=0 total_frames=300000
    python scripts/train.py algorithm=qmix env=matrix_game total_frames=20000 output_dir=/tmp/mg

Scalars go to ``output_dir`` through torchrl's logger (CSV by default), greedy evaluations to
``output_dir/eval.jsonl``, the final one to ``output_dir/final.json``; ``resume=true``
continues from ``output_dir/checkpoint.pt``.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from resq_torchrl.training.trainer import train


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    final = train(OmegaConf.to_container(cfg, resolve=True))
    print(f"final evaluation ({cfg.algorithm.name} on {cfg.env.name}, seed {cfg.seed}):")
    print(json.dumps(final, indent=2))


if __name__ == "__main__":
    main()
