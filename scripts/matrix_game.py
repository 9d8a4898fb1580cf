"""Train one value-factorization method on a one-step matrix game and print its table.

python scripts/matrix_game.py algorithm=resq seed=0 json_out=out.json plot=resq.png
python scripts/matrix_game.py algorithm=qmix payoff='[[8,-12,-12],[-12,0,0],[-12,0,7.9]]'
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.analysis import format_table
from resq_torchrl.training import train_matrix_game
from resq_torchrl.training.matrix_game import check_matrix_game_settings


@cli.main("matrix_game")
def main(cfg: DictConfig) -> None:
    check_matrix_game_settings(cfg)
    result = train_matrix_game(OmegaConf.to_container(cfg, resolve=True))
    print(f"{result['algorithm']} on the matrix game, seed {result['seed']}")
    print(format_table(result))
    written = [str(p) for p in (cfg.json_out, cfg.plot) if p]
    print(f"wrote {', '.join(written)}" if written else "wrote nothing (json_out=, plot= save it)")


if __name__ == "__main__":
    main()
