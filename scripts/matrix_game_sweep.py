"""Run several methods over many seeds on a matrix game; write a table, a figure and the runs.

    python scripts/matrix_game_sweep.py                       # vdn, qmix, resq x seeds 0..19
    python scripts/matrix_game_sweep.py 'algorithms=[resq]' n_seeds=5 out_dir=/tmp/mg

Finished runs are kept in ``cache_dir`` (one JSON per run, keyed by a hash of its whole
config): rerunning after an interruption, or with one more method, trains only what is
missing. ``cache_dir=null`` turns that off.

Every method gets the same training settings (those of ``configs/matrix_game.yaml`` plus
the command-line overrides); only ``algorithm`` changes.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from resq_torchrl import cli
from resq_torchrl.analysis.sweep import markdown_table, save_heatmap_grid, summarize
from resq_torchrl.errors import ConfigError, at_least, check_writable
from resq_torchrl.training import train_matrix_game_seeds
from resq_torchrl.training.matrix_game import check_matrix_game_settings

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def load_algorithm(name: str) -> dict:
    cli.check_choice("algorithm", name, CONFIGS)  # lists the algorithms when it is unknown
    path = CONFIGS / "algorithm" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def with_settings(algorithms: dict[str, dict], settings) -> dict[str, dict]:
    """``algorithm_settings`` applied to every listed algorithm whose config has the key
    (``{central_mixer_layers: 3}`` reaches the methods with a feed-forward mixer, and only
    them); a key no listed algorithm has is refused in one line."""
    settings = dict(settings or {})
    unknown = [k for k in settings if not any(k in algo for algo in algorithms.values())]
    if unknown:
        raise ConfigError(
            f"algorithm_settings: no listed algorithm has {', '.join(map(repr, unknown))} "
            f"(algorithms={list(algorithms)}; see configs/algorithm/<name>.yaml)"
        )
    return {
        name: {**algo, **{k: v for k, v in settings.items() if k in algo}}
        for name, algo in algorithms.items()
    }


def check_sweep(cfg: DictConfig) -> None:
    """One-line errors, before anything is trained or written, for a sweep that could only
    produce an empty table (or train a method other than the one asked for)."""
    if cli._command_line_value("algorithm") is not None:
        raise ConfigError(
            "the sweep trains algorithms=[...], not algorithm=: e.g. 'algorithms=[resq,qmix]'"
        )
    names = cfg.algorithms
    if isinstance(names, str) or not OmegaConf.is_list(names):
        raise ConfigError(f"algorithms must be a list like [resq,qmix], got {names!r}")
    if len(names) == 0:
        raise ConfigError("algorithms is empty: list at least one, e.g. 'algorithms=[resq]'")
    for key in ("n_seeds", "workers"):
        at_least(key, cfg[key], 1)
    check_matrix_game_settings(cfg)
    for key in ("out_dir", "cache_dir"):  # before the sweep, whose table would be lost
        check_writable(key, cfg.get(key), kind="dir")


@cli.main("matrix_game_sweep")
def main(cfg: DictConfig) -> None:
    check_sweep(cfg)
    base_settings = cfg.algorithm_settings
    if base_settings is not None and not OmegaConf.is_dict(base_settings):
        raise ConfigError(
            "algorithm_settings must be a mapping, e.g. 'algorithm_settings={central_mixer_"
            f"layers:3}}', got {base_settings!r}"
        )
    base_settings = OmegaConf.to_container(base_settings, resolve=True) if base_settings else {}
    base = OmegaConf.to_container(cfg, resolve=True)
    # what a single run sees (and what its cache key hashes): not the sweep's own options
    for key in (
        "algorithms",
        "n_seeds",
        "workers",
        "out_dir",
        "cache_dir",
        "threads",
        "vectorize",
        "reuse_freed_memory",
        "algorithm_settings",
    ):
        base.pop(key)
    algorithms = with_settings(
        {name: load_algorithm(name) for name in cfg.algorithms},
        base_settings,
    )

    def report(i, n, r):
        print(
            f"[{i}/{n}] {r['algorithm']} seed {r['seed']}: greedy {r['greedy_action']} "
            f"payoff {r['greedy_payoff']:g}",
            flush=True,
        )

    results = train_matrix_game_seeds(
        base,
        algorithms,
        range(int(cfg.n_seeds)),
        int(cfg.workers),
        on_result=report,
        cache_dir=cfg.cache_dir,
        threads=torch.get_num_threads(),
        vectorize=bool(cfg.vectorize),
    )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    command = " ".join(["python scripts/matrix_game_sweep.py", *map(shlex.quote, sys.argv[1:])])
    settings = {
        k: base[k]
        for k in (
            "batch_size",
            "n_updates",
            "optimizer",
            "lr",
            "optim_eps",
            "lr_schedule",
            "grad_clip",
        )
    }
    text = (
        "# Matrix game: every method over seeds\n\n"
        f"Made by `{command}` (settings: {settings}; payoff {base['payoff']}).\n\n"
        + markdown_table(summary)
        + "\n\n![heatmaps](matrix_game.png)\n"
    )
    (out / "matrix_game.md").write_text(text)
    (out / "matrix_game.json").write_text(json.dumps({"summary": summary, "runs": results}))
    save_heatmap_grid(results, out / "matrix_game.png")
    print(markdown_table(summary))
    print(f"wrote {out / 'matrix_game.md'}, {out / 'matrix_game.png'}, {out / 'matrix_game.json'}")
    if cfg.cache_dir:
        print(f"runs cached in {cfg.cache_dir}/")


if __name__ == "__main__":
    main()
