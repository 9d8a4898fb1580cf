"""Train one method on a one-step matrix game with uniform exploration (epsilon = 1).

The usual protocol of the matrix-game experiments (QTRAN, Weighted QMIX, ResQ): every update
draws a batch of uniformly random joint actions, so every cell is visited equally often and
the result shows what each factorization can represent, not what it happened to explore.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import multiprocessing as mp
from collections.abc import Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from resq_torchrl.analysis import evaluate_matrix_game, save_heatmap
from resq_torchrl.envs import MatrixGameEnv, payoff_tensor
from resq_torchrl.training.builders import (
    EnvDims,
    check_device,
    gradient_step,
    make_loss,
    make_optimizer,
    make_target_updater,
)


def train_matrix_game(cfg: Mapping) -> dict:
    """Train ``cfg.algorithm`` on ``cfg.payoff`` and return :func:`evaluate_matrix_game`'s dict
    plus ``algorithm`` and ``seed``; writes ``cfg.json_out`` and ``cfg.plot`` when set."""
    torch.manual_seed(int(cfg["seed"]))
    device = check_device(cfg.get("device", "cpu"))
    payoff = payoff_tensor(cfg["payoff"])
    env = MatrixGameEnv(payoff, batch_size=[int(cfg["batch_size"])], device=device)
    dims = EnvDims(n_agents=env.n_agents, n_actions=env.n_actions, obs_dim=1, state_dim=1)
    algo = cfg["algorithm"]
    loss = make_loss(algo, cfg["agent"], dims, device)
    optimizer = make_optimizer(
        loss, cfg["optimizer"], float(cfg["lr"]), float(cfg.get("optim_eps", 1e-5))
    )
    n_updates = int(cfg["n_updates"])
    schedule = cfg.get("lr_schedule", "constant")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose 'constant' or 'cosine'")
    # cosine: the learning rate decays to 0 at the last update, so the table we report is a
    # settled fit rather than a snapshot of a step that may have just flipped a near-tie
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_updates)
        if schedule == "cosine"
        else None
    )
    updater = make_target_updater(loss, interval=int(cfg["target_update_interval"]))
    grad_clip = float(cfg["grad_clip"])

    bar = tqdm(range(n_updates), desc=algo["name"], disable=not cfg.get("progress"))
    for _ in bar:
        losses, _ = gradient_step(loss, optimizer, env.rand_step(env.reset()), grad_clip)
        if scheduler is not None:
            scheduler.step()
        updater.step()
        bar.set_postfix(loss=f"{losses['loss_td'].item():.3f}", refresh=False)

    result = {"algorithm": algo["name"], "seed": int(cfg["seed"])}
    result.update(evaluate_matrix_game(loss, payoff))
    if cfg.get("json_out"):
        _write_json(Path(cfg["json_out"]), result)
    if cfg.get("plot"):
        save_heatmap(result, cfg["plot"], title=f"{algo['name']} (seed {cfg['seed']})")
    return result


def _train_with_threads(threads: int, cfg: Mapping) -> dict:
    torch.set_num_threads(threads)
    return train_matrix_game(cfg)


def job_key(job: Mapping) -> str:
    """A name for one run that changes whenever anything that can change its result does:
    ``<algorithm>_seed<k>_<hash of the whole config>`` (display options excluded)."""
    ignored = ("json_out", "plot", "progress", "threads")
    relevant = {k: v for k, v in job.items() if k not in ignored}
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
    return f"{job['algorithm']['name']}_seed{job['seed']}_{digest}"


def train_matrix_game_seeds(
    cfg: Mapping,
    algorithms: Mapping[str, Mapping],
    seeds,
    workers: int = 1,
    on_result=None,
    cache_dir: str | Path | None = None,
    threads: int = 1,
) -> list[dict]:
    """:func:`train_matrix_game` for every algorithm config and seed, in ``workers`` spawned
    processes of ``threads`` torch threads each (``workers=1``: in this process, with its
    thread count); results in (algorithm, seed) order.
    ``on_result(i, n, result)`` is called as runs finish.

    With ``cache_dir`` every finished run is written there (atomically) under
    :func:`job_key`, and a run whose file exists is read instead of trained again: an
    interrupted sweep resumes, and a sweep adding a method reruns only that method. The key
    hashes the full run config, so changed settings never reuse a stale result (a change of
    the code itself is not seen: clear the cache after changing a method).
    """
    jobs = [
        dict(cfg, algorithm=dict(algo), seed=int(seed), json_out=None, plot=None, progress=False)
        for algo in algorithms.values()
        for seed in seeds
    ]
    cache = None if cache_dir is None else Path(cache_dir)
    results: dict[int, dict] = {}
    todo = []
    for i, job in enumerate(jobs):
        path = None if cache is None else cache / f"{job_key(job)}.json"
        if path is not None and path.exists():
            results[i] = json.loads(path.read_text())
        else:
            todo.append(i)
    done = len(results)
    for n, i in enumerate(sorted(results), 1):
        if on_result is not None:
            on_result(n, len(jobs), results[i])
    if todo:
        with contextlib.ExitStack() as stack:
            if int(workers) > 1:
                pool = stack.enter_context(mp.get_context("spawn").Pool(int(workers)))
                train = functools.partial(_train_with_threads, int(threads))
                runs = pool.imap(train, [jobs[i] for i in todo])
            else:
                runs = map(train_matrix_game, [jobs[i] for i in todo])
            for n, (i, result) in enumerate(zip(todo, runs, strict=True), done + 1):
                results[i] = result
                if cache is not None:
                    _write_json(cache / f"{job_key(jobs[i])}.json", result)
                if on_result is not None:
                    on_result(n, len(jobs), result)
    return [results[i] for i in range(len(jobs))]


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a crash never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


__all__ = ["train_matrix_game", "train_matrix_game_seeds", "job_key"]
