"""Train one value-factorization method on a one-step matrix game and print its table.

python scripts/matrix_game.py algorithm=resq seed=0 json_out=out.json plot=resq.png
python scripts/matrix_game.py algorithm=qmix payoff='[[8,-12,-12],[-12,0,0],[-12,0,7.9]]'
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from resq_torchrl.analysis import format_table
from resq_torchrl.training import train_matrix_game


@hydra.main(config_path="../configs", config_name="matrix_game", version_base="1.3")
def main(cfg: DictConfig) -> None:
    result = train_matrix_game(OmegaConf.to_container(cfg, resolve=True))
    print(f"{result['algorithm']} on the matrix game, seed {result['seed']}")
    print(format_table(result))
    if cfg.json_out:
        print(f"wrote {cfg.json_out}")
    if cfg.plot:
        print(f"wrote {cfg.plot}")


if __name__ == "__main__":
    main()
