"""Run several methods over many seeds on a matrix game; write a table, a figure and the runs.

python scripts/matrix_game_sweep.py                       # vdn, qmix, resq x seeds 0..19
python scripts/matrix_game_sweep.py 'algorithms=[resq]' n_seeds=5 out_dir=/tmp/mg
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shlex
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from resq_torchrl.analysis.sweep import markdown_table, save_heatmap_grid, summarize
from resq_torchrl.training import train_matrix_game

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _run(cfg: dict) -> dict:
    torch.set_num_threads(1)
    return train_matrix_game(cfg)


@hydra.main(config_path="../configs", config_name="matrix_game_sweep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    base = OmegaConf.to_container(cfg, resolve=True)
    jobs = []
    for name in cfg.algorithms:
        algo_file = CONFIGS / "algorithm" / f"{name}.yaml"
        if not algo_file.exists():
            raise ValueError(f"unknown algorithm {name!r}: no {algo_file}")
        algo = OmegaConf.to_container(OmegaConf.load(algo_file), resolve=True)
        for seed in range(int(cfg.n_seeds)):
            job = dict(base, algorithm=algo, seed=seed, json_out=None, plot=None, progress=False)
            jobs.append(job)
    ctx = mp.get_context("spawn")
    with ctx.Pool(int(cfg.workers)) as pool:
        results = []
        for i, r in enumerate(pool.imap(_run, jobs), 1):
            results.append(r)
            print(
                f"[{i}/{len(jobs)}] {r['algorithm']} seed {r['seed']}: greedy "
                f"{r['greedy_action']} payoff {r['greedy_payoff']:g}",
                flush=True,
            )

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    command = "python scripts/matrix_game_sweep.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]
    )
    settings = {k: base[k] for k in ("batch_size", "n_updates", "optimizer", "lr", "grad_clip")}
    text = (
        "# Matrix game: every method over seeds\n\n"
        f"Made by `{command.strip()}` (settings: {settings}; payoff {base['payoff']}).\n\n"
        + markdown_table(summary)
        + "\n\n![heatmaps](matrix_game.png)\n"
    )
    (out / "matrix_game.md").write_text(text)
    (out / "matrix_game.json").write_text(json.dumps({"summary": summary, "runs": results}))
    save_heatmap_grid(results, out / "matrix_game.png")
    print(markdown_table(summary))
    print(f"wrote {out / 'matrix_game.md'}, {out / 'matrix_game.png'}, {out / 'matrix_game.json'}")


if __name__ == "__main__":
    main()
