"""The run's data collector, chosen by ``cfg.collector.type``: torchrl's collectors
(``torchrl.collectors``), returning batches of complete episodes (``trajs_per_batch``,
padded) that :class:`~resq_torchrl.data.EpisodeReplayBuffer` stores whole.

Every type yields the same batches: ``cfg["episodes_per_batch"]`` complete episodes
``[episodes, T]`` (``T`` the longest of them), zero-padded after each episode's end, with
``("collector", "mask")`` marking the real steps, ``("next", "done")`` true at each
episode's last real step and ``("next", "episode_reward")`` its running return.

==============  ============================================================================
``single``      one torchrl ``Collector`` in the training process, stepping the trainer's
                batched env of ``n_envs`` copies; its flat rollouts are assembled into
                episodes by :class:`~resq_torchrl.training.assembler.EpisodeAssembler`
                (vectorised; the other types use torchrl's ``trajs_per_batch``).
``multi_sync``  ``MultiSyncCollector``: ``collector.num_workers`` processes, each stepping
                its own batched env of ``n_envs`` copies ``rollout_steps`` steps per poll;
                the training process waits for all of them, then trains while they wait.
``multi_async`` ``MultiAsyncCollector``: the same workers, each collecting its next poll
                while the training process trains on the batch of another (the policy a
                worker acts with may be one update behind).
``ray``         torchrl's ``RayCollector``: ``collector.num_workers`` Ray actors, each a
                ``Collector`` over its own batched env, on a Ray cluster
                (``collector.ray_address``) or on a local Ray instance started on loopback
                and shut down with the collector (``ray_address: null``).
==============  ============================================================================

The workers build their env from the run's config (:func:`~resq_torchrl.training.builders.
make_env`) plus copies of the agent transforms the trainer appended to its own env (the
recurrent agents' primer of hidden state and last action, see
:func:`~resq_torchrl.training.trainer.add_agent_transforms`), so each worker's envs carry their
own recurrent state and last action. Worker ``i`` seeds its env and its torch generator (its
epsilon-greedy draws) with ``2**31 + seed * 1024 + i``; a resumed run seeds them anew
(:func:`worker_seed`). The policy's weights, including the epsilon of its ``EGreedyModule``,
are sent to the workers before each of their polls
(``update_at_each_batch`` / ``update_after_each_batch``): the trainer needs no call of its own.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import multiprocessing as mp
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from torchrl.envs import EnvBase, RewardSum, Transform, TransformedEnv

from resq_torchrl.errors import ConfigError, MissingDependencyError
from resq_torchrl.training.assembler import EpisodeAssembler

#: collector types ``collector.type`` accepts
COLLECTORS = ("single", "multi_sync", "multi_async", "ray")
#: the frame budget given to a collector that has no endless mode (the trainer stops it)
ENDLESS = 2**62


@dataclass
class WorkerEnvFactory:
    """Builds a worker's batched env: ``make_env(env_cfg, n_envs, device, seed)`` plus
    copies of ``transforms`` (the agent transforms of the trainer's env).

    Called in the worker process, it also seeds that process's torch generator with
    ``seed`` (the worker's exploration draws); called in the process that made it (a
    collector reading specs), it leaves that process's generator alone.
    """

    env_cfg: Mapping
    n_envs: int
    device: str
    seed: int
    transforms: list[Transform] = field(default_factory=list)
    maker: tuple[str, int] = field(default_factory=lambda: (socket.gethostname(), os.getpid()))

    def __call__(self) -> EnvBase:
        from resq_torchrl.training.builders import make_env

        if (socket.gethostname(), os.getpid()) != self.maker:
            torch.manual_seed(self.seed)
        env = make_env(self.env_cfg, self.n_envs, self.device, seed=self.seed)
        for transform in self.transforms:
            env.append_transform(transform.clone())
        return env


def agent_transforms(env: EnvBase) -> list[Transform]:
    """The transforms appended to ``env`` after those of ``make_env`` (which ends with the
    ``RewardSum`` writing ``"episode_reward"``): the agents' own, e.g. a recurrent agent's
    ``TensorDictPrimer``. Empty when there are none."""
    if not isinstance(env, TransformedEnv):
        return []
    transforms = list(env.transform) if hasattr(env.transform, "__iter__") else [env.transform]
    ends = [i for i, t in enumerate(transforms) if isinstance(t, RewardSum)]
    if not ends:
        raise ValueError(
            "the training env has no RewardSum transform: build it with "
            "resq_torchrl.training.builders.make_env"
        )
    return [t.clone() for t in transforms[ends[-1] + 1 :]]


def num_workers(cfg: Mapping) -> int:
    """``cfg["collector"]["num_workers"]``, checked to be a whole number >= 1."""
    value = cfg.get("collector", {}).get("num_workers", 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(value).strip() != str(n):
        raise ConfigError(f"collector.num_workers must be a whole number >= 1, got {value!r}")
    return n


def check_collector(cfg: Mapping) -> None:
    """Raise a :class:`ConfigError` (one line) for a collector setting that cannot work,
    before the run builds or writes anything (they failed when the collector was made,
    after the run's logs were written: the corrected command was then refused as a run
    into an output_dir holding one)."""
    coll = cfg.get("collector") or {}
    kind = str(coll.get("type", "single"))
    if kind not in COLLECTORS:
        raise ConfigError(f"unknown collector {kind!r}; choose one of: {', '.join(COLLECTORS)}")
    if kind == "single":
        return
    num_workers(cfg)
    if kind != "ray":
        return
    for key, low in (("worker_cpus", 0.0), ("worker_memory_mb", 0.0), ("object_store_mb", 0.0)):
        value = coll.get(key)
        try:
            ok = value is not None and float(value) > low and not isinstance(value, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"collector.{key} must be a number > 0, got {value!r}")
    if coll.get("ray_address"):
        check_ray_address(str(coll["ray_address"]))


#: seconds :func:`check_ray_address` waits for a cluster's head to accept a connection
RAY_CONNECT_TIMEOUT_S = 5.0


def check_ray_address(address: str) -> None:
    """Raise a :class:`ConfigError` (one line) when ``collector.ray_address`` is neither
    ``auto`` nor ``HOST:PORT`` / ``ray://HOST:PORT``, or when nothing accepts a connection
    there within :data:`RAY_CONNECT_TIMEOUT_S`: ``ray.init`` retried such an address for
    minutes before failing with a traceback."""
    if address == "auto":  # ray reads the address of the cluster started on this machine
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")  # [IPv6]:PORT
    if not sep or not host or not port.isdigit():
        raise ConfigError(
            f"collector.ray_address must be HOST:PORT, ray://HOST:PORT, auto, or null for a "
            f"local Ray, got {address!r}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        raise ConfigError(
            f"collector.ray_address={address}: no Ray cluster answers there "
            f"({err.strerror or type(err).__name__}); start its head with `ray start --head "
            f"--port={port}`, or set collector.ray_address=null for a local Ray"
        ) from None


#: a fresh run's workers are seeded ``WORKER_SEEDS + seed * MAX_WORKERS + worker`` (one
#: number per run seed and worker, above the env seeds such runs take: ``seed``, ``seed + 1``)
WORKER_SEEDS, MAX_WORKERS = 2**31, 1024


def worker_seed(seed: int, worker: int, resumed_at: int = 0) -> int:
    """Worker ``worker``'s seed, ``0 <= . < 2**32``.

    A fresh run (``resumed_at=0``) with ``0 <= seed < 2**21`` and fewer than
    :data:`MAX_WORKERS` workers: ``2**31 + seed * 1024 + worker``, so no two runs' workers
    share a seed and none takes a run's env seed (it was ``seed + 1000 * (worker + 1)``,
    with which worker 0 of seed 0 drew the episodes of the run of seed 1000). Otherwise,
    and for a run resumed at ``resumed_at`` frames, a hash of the three numbers: the
    workers' envs and exploration cannot be restored, and reseeding them as at the start
    would replay the random streams the run already used."""
    if resumed_at <= 0 and 0 <= seed < 2**21 and 0 <= worker < MAX_WORKERS:
        return WORKER_SEEDS + seed * MAX_WORKERS + worker
    digest = hashlib.sha256(f"{seed}/{worker}/{resumed_at}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def worker_env_factories(cfg: Mapping, env: EnvBase, device, workers: int, resumed_at: int = 0):
    """One :class:`WorkerEnvFactory` per worker, seeded by :func:`worker_seed`."""
    extra = agent_transforms(env)
    seed = int(cfg["seed"])
    return [
        WorkerEnvFactory(
            dict(cfg["env"]),
            int(cfg["n_envs"]),
            str(device),
            worker_seed(seed, i, resumed_at),
            extra,
        )
        for i in range(workers)
    ]


#: what every torchrl collector of a run is given: torchrl 0.14's preallocated output buffer
#: drops the agent dimension of the root "agents" group when the policy writes under
#: ("next", "agents"); stacking the steps instead keeps every group's batch size
ROLLOUT_OPTIONS = {"use_buffers": False}


def _episode_options(cfg: Mapping) -> dict:
    """What the multi-process types are given: complete padded episodes assembled by
    torchrl (``single`` assembles them itself: :class:`EpisodeAssembler`), stacked steps."""
    return {
        "trajs_per_batch": int(cfg["episodes_per_batch"]),
        "traj_format": "padded",
        **ROLLOUT_OPTIONS,
    }


def _use_a_standard_start_method() -> None:
    """torchrl's collectors start their workers with the global multiprocessing start method
    when one is set, else with ``spawn``; inside a joblib worker (``hydra/launcher=joblib``)
    that is joblib's own ``loky``, whose processes torchrl's cannot be: use ``spawn`` there."""
    if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
        mp.set_start_method("spawn", force=True)


def _make_multi(cfg: Mapping, env: EnvBase, policy, device, sync: bool, resumed_at: int):
    workers = num_workers(cfg)
    _use_a_standard_start_method()
    per_worker = int(cfg["n_envs"]) * int(cfg["rollout_steps"])
    cls = MultiSyncCollector if sync else MultiAsyncCollector
    extra = {"cat_results": "stack"} if sync else {}
    return cls(
        worker_env_factories(cfg, env, device, workers, resumed_at),
        policy,
        # a poll of n_envs x rollout_steps frames in every worker, as the single collector's
        frames_per_batch=per_worker * workers,
        total_frames=-1,
        device=device,
        # the weights (and epsilon) the training process holds now, sent before each poll
        update_at_each_batch=True,
        # keep the training process's thread count (torchrl would give it cores - workers)
        num_threads=torch.get_num_threads(),
        num_sub_threads=torch.get_num_threads(),
        **_episode_options(cfg),
        **extra,
    )


def ray_init_config(cfg: Mapping) -> dict:
    """``ray.init`` arguments: connect to ``collector.ray_address``, or (``null``) start a
    local instance on loopback with the CPUs its workers reserve (``num_workers`` times
    ``worker_cpus``: with ``num_workers`` CPUs, workers of 2 could never be placed and the
    run waited forever) and a small object store."""
    coll = cfg.get("collector", {})
    address = coll.get("ray_address")
    if address:
        return {"address": str(address), "include_dashboard": False, "log_to_driver": True}
    return {
        "address": None,
        "num_cpus": math.ceil(num_workers(cfg) * float(coll.get("worker_cpus", 1))),
        "object_store_memory": int(coll.get("object_store_mb", 128)) * 1024**2,
        "include_dashboard": False,
        "_node_ip_address": "127.0.0.1",
        "log_to_driver": True,
        "configure_logging": False,
    }


class RayWorkerCollector(Collector):
    """torchrl's ``Collector`` as a Ray actor, with a one-line ``repr``: Ray prefixes every
    log line of an actor with it (the ``Collector``'s own spans the whole env and policy)."""

    def __repr__(self) -> str:
        return f"RayWorkerCollector(worker={self.worker_idx})"


def _make_ray(cfg: Mapping, env: EnvBase, policy, device, resumed_at: int):
    try:
        from torchrl.collectors.distributed import RayCollector
    except ImportError as err:  # pragma: no cover - torchrl without its distributed module
        raise MissingDependencyError(
            f"collector=ray needs torchrl's distributed collectors: {err}"
        ) from err
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError as err:
        raise MissingDependencyError(
            "collector=ray needs 'ray', which is not installed: pip install -e '.[distributed]'"
        ) from err
    workers = num_workers(cfg)
    coll = cfg.get("collector", {})
    collector = RayCollector(
        worker_env_factories(cfg, env, device, workers, resumed_at),
        policy,
        frames_per_batch=int(cfg["n_envs"]) * int(cfg["rollout_steps"]),
        # endless (RayCollector reads -1 as a budget already spent)
        total_frames=ENDLESS,
        collector_class=RayWorkerCollector,
        collector_kwargs={"device": str(device), **_episode_options(cfg)},
        num_collectors=workers,
        # first ready, first served: each remote Collector's output is a whole batch of
        # padded episodes, and their lengths T differ between workers (no stacking)
        sync=False,
        ray_init_config=ray_init_config(cfg),
        remote_configs={
            "num_cpus": float(coll.get("worker_cpus", 1)),
            "memory": int(coll.get("worker_memory_mb", 512)) * 1024**2,
        },
        update_after_each_batch=True,
    )
    collector.update_policy_weights_()  # the first sync: connects the workers' receivers
    return collector


def make_collector(cfg: Mapping, env: EnvBase, policy, device: torch.device, resumed_at: int = 0):
    """The collector of a run: polls of ``cfg["n_envs"] * cfg["rollout_steps"]`` frames
    (per worker), yielding ``cfg["episodes_per_batch"]`` complete episodes per batch, endless
    (the trainer stops it at ``total_frames`` and calls its ``shutdown()``).

    Args:
        cfg: the run's config: ``collector.type`` (one of :data:`COLLECTORS`), and for the
            multi-process types ``collector.num_workers``, for ``ray`` ``collector.ray_address``.
        env: the trainer's batched env (with the agent transforms appended); collected from
            by ``single``, a template of the workers' envs otherwise.
        policy: the collection policy (agents, masked greedy, epsilon-greedy).
        device: where the policy and the collected batches live.
        resumed_at: the frames of the checkpoint a resumed run continues from (0: a fresh
            run): the multi-process types then seed their workers anew (:func:`worker_seed`).
    """
    check_collector(cfg)
    kind = str(cfg.get("collector", {}).get("type", "single"))
    if kind == "multi_sync":
        return _make_multi(cfg, env, policy, device, sync=True, resumed_at=resumed_at)
    if kind == "multi_async":
        return _make_multi(cfg, env, policy, device, sync=False, resumed_at=resumed_at)
    if kind == "ray":
        return _make_ray(cfg, env, policy, device, resumed_at)
    rollouts = Collector(
        env,
        policy,
        frames_per_batch=int(cfg["n_envs"]) * int(cfg["rollout_steps"]),
        # endless: the training loop stops at total_frames. The collector's own budget counts
        # every polled step, also those of episodes still running when it ends (dropped),
        # and so stopped up to a whole batch of episodes short of it.
        total_frames=-1,
        device=device,
        **ROLLOUT_OPTIONS,
    )
    # flat rollouts, assembled into episodes with tensor operations (torchrl's own
    # trajs_per_batch loop works one trajectory at a time: see training/assembler.py)
    return EpisodeAssembler(rollouts, int(cfg["episodes_per_batch"]), int(cfg["env"]["max_steps"]))


__all__ = [
    "COLLECTORS",
    "check_collector",
    "RayWorkerCollector",
    "WorkerEnvFactory",
    "agent_transforms",
    "make_collector",
    "num_workers",
    "ray_init_config",
    "check_ray_address",
    "worker_env_factories",
    "worker_seed",
]
