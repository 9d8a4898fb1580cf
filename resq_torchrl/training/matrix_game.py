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
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from tensordict import TensorDict
from tqdm.auto import tqdm

from resq_torchrl.analysis import evaluate_matrix_game, save_heatmap
from resq_torchrl.envs import MatrixGameEnv, payoff_tensor
from resq_torchrl.errors import at_least, check_figure_path, check_writable
from resq_torchrl.training.builders import (
    EnvDims,
    check_device,
    gradient_step,
    make_loss,
    make_optimizer,
    make_target_updater,
    optimizer_over,
    total_loss,
)


def check_matrix_game_settings(cfg: Mapping) -> None:
    """Raise a :class:`ConfigError` naming the key for settings that would train nothing
    and print an untrained table as the result (``n_updates=0``, ``lr=0``) or fail deep
    inside (``batch_size=0``); what ``scripts/matrix_game.py`` and the sweep check first.
    (The library functions take ``n_updates=0``: the benchmark times a run's set-up so.)"""
    for key in ("n_updates", "batch_size"):
        at_least(key, cfg[key], 1)
    for key in ("lr", "optim_eps", "grad_clip"):
        at_least(key, cfg.get(key), 0, strict=True)
    for key in ("json_out", "plot"):  # before the training, whose result would be lost
        check_writable(key, cfg.get(key))
    check_figure_path("plot", cfg.get("plot"))  # savefig failed after the training


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
    loss.one_step = True  # every transition terminates: no next-state passes (same numbers)
    optimizer = make_optimizer(
        loss, cfg["optimizer"], float(cfg["lr"]), float(cfg.get("optim_eps", 1e-5)), flat=True
    )
    n_updates = int(cfg["n_updates"])
    scheduler = _scheduler(optimizer, cfg, n_updates)
    updater = make_target_updater(loss, interval=int(cfg["target_update_interval"]))
    grad_clip = float(cfg["grad_clip"])

    bar = tqdm(range(n_updates), desc=algo["name"], disable=not cfg.get("progress"))
    for _ in bar:
        losses, _ = gradient_step(loss, optimizer, env.rand_transition(), grad_clip)
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


def train_matrix_game_vectorized(cfg: Mapping, seeds) -> list[dict]:
    """:func:`train_matrix_game` for every seed of ``seeds`` at once, as one vectorised
    model: the seeds' parameters are stacked and one ``torch.func.vmap`` of the loss
    computes every seed's update (vmap over stacked parameters, as torchrl does for its
    Q-value ensembles). On the CPU a matrix-game update is mostly per-op overhead, so 20
    seeds cost 2-6x one seed's update, not 20x (``docs/speed.md``).

    Per seed it is the same training as the single-seed run: the same initial networks
    (each built after ``torch.manual_seed(seed)``), the same batches (each seed's actions
    drawn from its own generator, continuing the single run's global-generator stream),
    gradient clipping per seed, the same optimizer, schedule and target updates. It is not
    the same bit for bit: batched products round differently from single ones, and the
    distributional losses (``dmix``, ``resz``, ``ddn``) draw their fractions from one
    stream for the group (the global generator, seeded by the list of seeds), so their
    results depend on the group a seed trains in. Runs that are chaotic (near-ties the
    rounding can flip) may then end differently; ``docs/results.md`` compares the two
    sweeps.

    Returns the results of :func:`train_matrix_game`, in the order of ``seeds``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("train_matrix_game_vectorized needs at least one seed")
    device = check_device(cfg.get("device", "cpu"))
    payoff = payoff_tensor(cfg["payoff"])
    n_seeds, batch = len(seeds), int(cfg["batch_size"])
    env = MatrixGameEnv(payoff, batch_size=[n_seeds * batch], device=device)
    dims = EnvDims(n_agents=env.n_agents, n_actions=env.n_actions, obs_dim=1, state_dim=1)
    algo = cfg["algorithm"]
    losses, generators = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        losses.append(make_loss(algo, cfg["agent"], dims, device))
        losses[-1].one_step = True  # no next-state passes (the same numbers)
        # the single run's batches come next from the global generator: continue its stream
        generator = torch.Generator(device=device)
        generator.set_state(
            torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device)
        )
        generators.append(generator)
    # what the loss draws itself (the distributional losses' fractions) comes from the
    # global generator, seeded by the list of seeds, apart from every seed's action stream
    torch.manual_seed(_stream_seed(seeds))
    loss = losses[0]  # the module the stacked parameters are swapped into
    params = TensorDict.from_modules(*losses, as_module=True)  # leaves [S, ...]
    trainable = [p for p in params.values(True, True) if p.requires_grad]
    # element-wise updates: one optimizer over the stacked seeds is one per seed (flat, as
    # in the single run)
    optimizer = optimizer_over(
        trainable, cfg["optimizer"], float(cfg["lr"]), float(cfg.get("optim_eps", 1e-5)), True
    )
    n_updates = int(cfg["n_updates"])
    scheduler = _scheduler(optimizer, cfg, n_updates)
    interval = int(cfg["target_update_interval"])
    if interval < 1:
        raise ValueError(f"target update interval must be >= 1, got {interval}")
    # torchrl's HardUpdate copies a loss's own parameters; these live in `params`, so the
    # same copy (target_<name>_params <- <name>_params) is done here, and the loss is told
    # its targets are updated (torchrl warns on every call otherwise)
    targets = []
    for key in params.keys():
        if not key.startswith("target_"):
            continue
        if key[len("target_") :] in params.keys():
            targets.append(key)
        elif not params[key].is_empty():  # a parameter-free target (VDN's mixer) is skipped
            raise RuntimeError(f"no online parameters for {key} in the {algo['name']} loss")
    for name in loss._has_update_associated:
        loss._has_update_associated[name] = True
    grad_clip = float(cfg["grad_clip"])

    def seed_loss(p, td):
        with p.to_module(loss):
            out = loss(td)
        return total_loss(out), out.get("loss_td")

    step = torch.func.vmap(seed_loss, (0, 0), randomness="different")
    bar = tqdm(range(n_updates), desc=f"{algo['name']} x{n_seeds}", disable=not cfg.get("progress"))
    for i in bar:
        action = torch.stack(
            [
                torch.randint(0, env.n_actions, (batch, env.n_agents), generator=g, device=device)
                for g in generators
            ]
        )
        td = env.rand_transition(action.reshape(n_seeds * batch, env.n_agents))
        total, loss_td = step(params, td.reshape(n_seeds, batch))
        optimizer.zero_grad()
        total.sum().backward()  # seeds share no parameter: each gets its own gradient
        _clip_per_seed(trainable, grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if (i + 1) % interval == 0:
            with torch.no_grad():
                for key in targets:
                    params[key].update_(params[key[len("target_") :]])
        bar.set_postfix(loss=f"{loss_td.mean().item():.3f}", refresh=False)

    results = []
    for seed, single, trained in zip(seeds, losses, params.detach().unbind(0), strict=True):
        with torch.no_grad():
            TensorDict.from_module(single).update_(trained)
        result = {"algorithm": algo["name"], "seed": seed, "vectorized": True}
        result.update(evaluate_matrix_game(single, payoff))
        results.append(result)
    return results


def _stream_seed(seeds: list[int]) -> int:
    """A seed for the draws of a vectorised group, a function of its list of seeds."""
    digest = hashlib.sha256(json.dumps(["vectorized", *seeds]).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def _clip_per_seed(params: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each seed of stacked ``[S, ...]`` parameters:
    the same formula (norm of the per-tensor norms; coefficient ``max_norm / (norm +
    1e-6)`` capped at 1), written by hand because torch's clips all tensors as one."""
    grads = [p.grad for p in params]
    norms = [torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads]
    norms = torch.stack(norms, 1)
    coef = (max_norm / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))


def _scheduler(optimizer, cfg: Mapping, n_updates: int):
    schedule = cfg.get("lr_schedule", "constant")
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown lr_schedule {schedule!r}; choose 'constant' or 'cosine'")
    # cosine: the learning rate decays to 0 at the last update, so the table we report is a
    # settled fit rather than a snapshot of a step that may have just flipped a near-tie
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_updates)
    return None


def job_key(job: Mapping) -> str:
    """A name for one run that changes whenever anything that can change its result does:
    ``<algorithm>_seed<k>_<hash of the whole config>`` (display options excluded)."""
    ignored = ("json_out", "plot", "progress", "threads", "reuse_freed_memory")
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
    vectorize: bool = False,
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

    ``vectorize=True``: all the seeds of each algorithm train as one vectorised model
    (:func:`train_matrix_game_vectorized`; the workers then take one algorithm each). A
    seed's result depends on the group it trained in (rounding; the distributional losses'
    fractions come from one stream per group), so the key also hashes the list of seeds,
    and a group with any run missing is trained again whole. These runs never share keys
    with the single-seed runs: they are not bit-equal.
    """
    seeds = [int(seed) for seed in seeds]
    extra = {"vectorize": {"seeds": seeds}} if vectorize else {}
    jobs = [
        dict(
            cfg,
            algorithm=dict(algo),
            seed=int(seed),
            json_out=None,
            plot=None,
            progress=False,
            **extra,
        )
        for algo in algorithms.values()
        for seed in seeds
    ]
    cache = None if cache_dir is None else Path(cache_dir)
    # units of work: one run each, or with vectorize every seed of one algorithm config
    # (grouped by the whole config but the seed: two variants may share a name)
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        key = json.dumps({k: v for k, v in job.items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key if vectorize else str(i), []).append(i)
    results: dict[int, dict] = {}
    units = []
    for unit in groups.values():
        paths = [None if cache is None else cache / f"{job_key(jobs[i])}.json" for i in unit]
        cached = [None if path is None else _cached_result(path) for path in paths]
        if all(result is not None for result in cached):
            results.update(dict(zip(unit, cached, strict=True)))
        else:  # trained (again: an unreadable entry is overwritten)
            units.append(unit)
    # the costliest units first (longest-processing-time-first scheduling): with the pool's
    # workers taking units in order, ResZ's group no longer starts last and runs alone at
    # the end (results are kept in (algorithm, seed) order whatever the schedule)
    units.sort(key=lambda unit: -_relative_cost(jobs[unit[0]]["algorithm"]["name"]) * len(unit))
    done = len(results)
    for n, i in enumerate(sorted(results), 1):
        if on_result is not None:
            on_result(n, len(jobs), results[i])
    if units:
        train = functools.partial(_train_group, int(threads), jobs, vectorize)
        with contextlib.ExitStack() as stack:
            if int(workers) > 1 and len(units) > 1:
                pool = stack.enter_context(mp.get_context("spawn").Pool(int(workers)))
                runs = pool.imap(train, units)
            else:
                runs = map(train, units)
            n = done
            for unit, unit_results in zip(units, runs, strict=True):
                for i, result in zip(unit, unit_results, strict=True):
                    n += 1
                    results[i] = result
                    if cache is not None:
                        _write_json(cache / f"{job_key(jobs[i])}.json", result)
                    if on_result is not None:
                        on_result(n, len(jobs), result)
    return [results[i] for i in range(len(jobs))]


#: what a sweep reads of a cached run (the table, the heatmaps): an entry without them is
#: not a run's result
RESULT_KEYS = (
    "algorithm",
    "seed",
    "payoff",
    "q_agents",
    "q_jt",
    "greedy_action",
    "greedy_payoff",
    "optimal_payoff",
    "igm_consistent",
)


def _cached_result(path: Path) -> dict | None:
    """The run result cached at ``path``, or ``None`` when there is none or it cannot be
    read back (cut short, not a run's result: said on one warning line, and the run is
    trained again, which overwrites it; it ended the sweep on a JSONDecodeError)."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
        why = None
        if not isinstance(result, dict):
            why = f"a JSON {type(result).__name__}, not a run's result"
        elif missing := [k for k in RESULT_KEYS if k not in result]:
            why = f"not a run's result: no {', '.join(missing)}"
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError, UnicodeDecodeError
        why = " ".join(f"{type(err).__name__}: {err}".split())
    if why is None:
        return result
    print(
        f"warning: cache entry {path} is unreadable ({why}): training that run again, which "
        "overwrites it",
        file=sys.stderr,
        flush=True,
    )
    return None


#: CPU seconds of 100 vectorised updates of 20 seeds on the paper's game, per method (one
#: thread, measured 2026-12-03 on the 2-core AMD EPYC machine, setup and evaluation
#: included; single-seed runs rank the same way): only the order matters, for scheduling
_COST = {
    "resz": 14.3,
    "qplex": 8.0,
    "resq": 3.6,
    "dmix": 3.0,
    "cw_qmix": 3.0,
    "qtran": 2.9,
    "ddn": 2.6,
    "ow_qmix": 2.5,
    "qmix": 1.3,
    "vdn": 0.7,
}


def _relative_cost(name: str) -> float:
    """:data:`_COST` of method ``name``; a method not measured there counts as the costliest
    (started early, it cannot be the one left running alone at the end)."""
    return _COST.get(name, max(_COST.values()))


def _train_group(threads: int, jobs: list[dict], vectorize: bool, unit: list[int]) -> list[dict]:
    """Train ``jobs[i]`` for ``i`` in ``unit`` (in a pool worker: with ``threads`` torch
    threads; in this process: with its own count)."""
    if mp.parent_process() is not None:
        torch.set_num_threads(threads)
    if vectorize:
        return train_matrix_game_vectorized(jobs[unit[0]], [jobs[i]["seed"] for i in unit])
    return [train_matrix_game(jobs[i]) for i in unit]


def _write_json(path: Path, data: dict) -> None:
    """Write atomically: a crash never leaves a truncated file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


__all__ = [
    "train_matrix_game",
    "train_matrix_game_seeds",
    "train_matrix_game_vectorized",
    "job_key",
]
