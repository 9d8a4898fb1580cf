"""Speed of this code, measured side by side in one run (issue 12, items 4 and 5).

    python benchmarks/throughput.py                       # configs/throughput.yaml, ~10 min
    python benchmarks/throughput.py against=f4b0b87       # also the code of commit f4b0b87
    python benchmarks/throughput.py quick=true            # < 2 minutes
    python benchmarks/throughput.py gpu=true              # device=cuda, VMAS 1024/4096/16384

(``--quick`` and ``--against REV`` are accepted too.) It measures, candidates interleaved
round by round (A, B, C, A, B, C, ...; medians and minima over the rounds):

1. **ms per update of every method** on the predator-prey reference batch (32 whole
   episodes x 200 steps x 8 agents, 6 actions, 50 observation and 200 state features,
   :func:`update_worker.reference_batch`), GRU agents of ``configs/train.yaml``, TD(lambda)
   as each ``configs/algorithm/*.yaml`` says; one update = loss forward + backward +
   optimizer step (``make_optimizer``, ``train.yaml``'s optimizer), and its ratio to
   ``qmix``. Measured in worker processes (``benchmarks/update_worker.py``), one per
   revision, one request at a time.
   ``clock=cpu`` reads the workers' process CPU time instead of wall time (a machine shared
   with other work: what the update cost, not how long it waited for a core).
   ``short_updates``: the same on a batch of short episodes padded to the longest (one of
   200 steps, the others 20-60: a late sample of a run that has learned to catch), where
   the unrolls compute only the real steps (``docs/speed.md``).
2. **against=REV**: the same for the code of commit REV, from a ``git worktree`` of it (in a
   temporary directory, removed at the end): the ratio now / REV is one measured ratio.
3. **ms per update on the matrix game** (``train_matrix_game`` with the checkout's
   ``configs/matrix_game.yaml``, set-up and evaluation subtracted), now and at REV; and per
   seed with ``matrix.vectorized_seeds`` seeds as one vectorised model (this checkout).
4. **Collection frames/s versus env-only steps/s**: the training collector of ``train()``
   (agents + masked greedy + epsilon-greedy, torchrl ``Collector`` with train.py's settings)
   without updates, against random available actions with auto-reset.
5. **External reference**: torchrl's own multi-agent QMIX (``QMixerLoss``, ``MultiAgentMLP``,
   torchrl's ``QMixer``, as in torchrl's ``examples/multiagent/qmix_vdn.py``) against our
   ``qmix`` with matched sizes, on the same batch of VMAS balance transitions.
6. **Replay memory**: bytes per stored agent-step of ``EpisodeReplayBuffer`` holding real
   predator-prey episodes, against the raw bytes of what they hold.
7. **Thread counts** (``thread_counts``): the reference batch's update of a few methods in
   a worker of one thread and one of every usable core, wall time: what ``train.py``'s
   ``threads=auto`` rests on, measured on the machine at hand (skipped on one core).

Writes ``out`` (JSON) and ``markdown`` (tables, command, machine) and prints both paths.
Worker processes run with ``OMP_NUM_THREADS`` and torch threads set to this script's thread
count (``threads``, default 1: every workload here is a one-thread workload).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

# torchrl reads it on import: the losses here run without target updaters on purpose
os.environ.setdefault("RL_WARNINGS", "False")

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from resq_torchrl import cli  # noqa: E402
from resq_torchrl.errors import ConfigError, at_least, check_writable  # noqa: E402
from resq_torchrl.training.builders import check_device  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
WORKER = Path(__file__).resolve().parent / "update_worker.py"
NOW = "now"
CLOCKS = {"wall": "seconds", "cpu": "cpu_seconds"}  # clock= -> the update workers' answer read


# ------------------------------------------------------------------------------------ helpers


def sync(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators ``fork_rng`` must restore (as ``train()``)."""
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


def load_config(*parts: str) -> dict:
    """A config file of ``configs/`` as a plain dict, interpolations resolved, without its
    ``defaults`` and ``hydra`` entries."""
    cfg = OmegaConf.load(CONFIGS.joinpath(*parts[:-1], f"{parts[-1]}.yaml"))
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    return OmegaConf.to_container(cfg, resolve=True)


def compose_train(*overrides: str) -> dict:
    """``configs/train.yaml`` composed by Hydra with ``overrides``, resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # under hydra.main: the same configs/ tree
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=True)


def env_config(name: str) -> dict:
    """The env config ``env=name`` of a training run."""
    cli.check_choice("env", name)
    return compose_train(f"env={name}")["env"]


def summary(values: Sequence[float], best=min) -> dict:
    """Median and best of one candidate's per-round values (``best``: ``min`` for times,
    ``max`` for rates), and the values themselves."""
    return {"median": statistics.median(values), "best": best(values), "rounds": list(values)}


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of ``a[r] / b[r]``: both measured in the same round."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def train_defaults() -> dict:
    """What the measurements take from ``configs/train.yaml``: agents, optimizer,
    exploration and the collector's settings."""
    cfg = compose_train()
    keys = ("agent", "optimizer", "lr", "optim_eps", "exploration", "rollout_steps", "seed")
    return {k: cfg[k] for k in keys}


def machine_facts(device: torch.device) -> dict:
    import tensordict
    import torchrl

    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": cli.usable_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(ImportError, AttributeError):
        import vmas

        facts["vmas"] = vmas.__version__
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        raise ConfigError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[tuple[Path, str]]:
    """A ``git worktree`` of ``rev`` in a temporary directory (and its full commit hash),
    removed on exit."""
    try:
        sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    except ConfigError as err:
        raise ConfigError(
            f"against={rev} is not a commit of this repository: give a commit hash, tag or "
            "branch, e.g. against=f4b0b87"
        ) from err
    tmp = Path(tempfile.mkdtemp(prefix="throughput_"))
    path = tmp / f"rev_{sha[:10]}"
    git("worktree", "add", "--detach", str(path), sha)
    try:
        yield path, sha
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


class UpdateWorker:
    """``benchmarks/update_worker.py`` running the library of ``checkout`` in a subprocess."""

    def __init__(
        self, label: str, checkout: Path, threads: int, log_dir: Path, reuse_memory: bool = True
    ) -> None:
        self.label = label
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
        self.log = log_dir / f"worker_{safe}.log"
        pythonpath = os.pathsep.join(
            p for p in (str(checkout), os.environ.get("PYTHONPATH", "")) if p
        )
        env = dict(
            os.environ,
            PYTHONPATH=pythonpath,
            BENCH_CHECKOUT=str(checkout),
            BENCH_THREADS=str(threads),
            BENCH_REUSE_FREED_MEMORY="1" if reuse_memory else "0",
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            RL_WARNINGS="False",
        )
        self._stderr = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=checkout,
            env=env,
        )
        self.info = self.ask(cmd="info")
        expected = (checkout / "resq_torchrl").resolve()
        if Path(self.info["library"]) != expected:
            self.close()
            raise RuntimeError(
                f"worker {label} imported resq_torchrl from {self.info['library']}, not {expected}"
            )

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self._stderr.flush()
            tail = self.log.read_text()[-3000:]
            raise RuntimeError(f"worker {self.label} died on {request}; its stderr:\n{tail}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(
                f"worker {self.label} failed on {request}: {answer['error']}\n"
                f"{answer.get('traceback', '')}"
            )
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, OSError, RuntimeError):
                self.ask(cmd="quit")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._stderr.close()


def interleaved(rounds: int, candidates: list) -> Iterator[tuple[int, object]]:
    """``(round, candidate)``: every candidate once per round, the order rotated by one each
    round (A B C, B C A, C A B, ...), so no candidate always runs first or after the same
    one."""
    n = len(candidates)
    for r in range(rounds):
        for i in range(n):
            yield r, candidates[(i + r) % n]


# ------------------------------------------------------------------- 1-2: updates per method


def measure_updates(
    workers: dict[str, UpdateWorker],
    cfg: DictConfig,
    train: dict,
    section: str = "updates",
    clock: str | None = None,
) -> dict:
    """Items 1-2 on the batch of ``cfg[section]``: ``updates`` (the reference batch) or
    ``short_updates`` (short episodes padded to the longest, ``early_lengths``); item 7
    (``thread_counts``) with ``clock="wall"`` whatever ``cfg.clock`` says."""
    ucfg = cfg[section]
    algorithms = list(ucfg.algorithms)
    batch = {
        k: int(ucfg[k])
        for k in ("episodes", "steps", "n_agents", "n_actions", "obs_dim", "state_dim")
    }
    batch["seed"] = int(cfg.seed)
    if ucfg.get("early_end_fraction") is not None:
        batch["early_end_fraction"] = float(ucfg.early_end_fraction)
    if ucfg.get("early_lengths") is not None:
        batch["early_lengths"] = [int(n) for n in ucfg.early_lengths]
    params = {}
    for label, worker in workers.items():
        print(f"{section}: building {len(algorithms)} losses in worker {label}", flush=True)
        params[label] = worker.ask(
            cmd="setup",
            algorithms=algorithms,
            agent=train["agent"],
            batch=batch,
            device=str(cfg.device),
            seed=int(cfg.seed),
            optimizer=train["optimizer"],
            lr=float(train["lr"]),
            warmup=int(ucfg.warmup),
        )["params"]
    seconds = {label: {a: [] for a in algorithms} for label in workers}
    candidates = [(a, label) for a in algorithms for label in workers]
    rounds = int(ucfg.rounds)
    clock_name = clock or cfg.get("clock", "wall")
    clock = CLOCKS[clock_name]
    for r, (algo, label) in interleaved(rounds, candidates):
        seconds[label][algo].append(workers[label].ask(cmd="update", algorithm=algo)[clock])
        if all(len(seconds[lb][a]) == r + 1 for a, lb in candidates):
            line = ", ".join(f"{a}/{lb} {1e3 * seconds[lb][a][-1]:.0f}" for a, lb in candidates)
            print(f"{section} round {r + 1}/{rounds} (ms): {line}", flush=True)
    rows = []
    for algo in algorithms:
        row = {"algorithm": algo}
        for label in workers:
            ms = [1e3 * s for s in seconds[label][algo]]
            row[label] = {**summary(ms), "params": params[label][algo]}
            if "qmix" in algorithms:
                qmix = seconds[label]["qmix"]
                row[label]["ratio_to_qmix"] = paired_ratio(seconds[label][algo], qmix)
        if len(workers) == 2 and NOW in workers:
            other = [lb for lb in workers if lb != NOW][0]
            row["ratio_now_vs_against"] = paired_ratio(seconds[NOW][algo], seconds[other][algo])
        rows.append(row)
    return {
        "batch": batch,
        "agent": train["agent"],
        "optimizer": train["optimizer"],
        "clock": clock_name,
        "rows": rows,
    }


# ----------------------------------------------------------------------- 7: thread counts


def measure_thread_counts(cfg: DictConfig, train: dict, logs: Path) -> dict:
    """Item 7: the same update in a worker of one torch thread and one of every usable core
    (``cli.usable_cores``), interleaved, wall time (CPU time would count every thread)."""
    many = cli.usable_cores()
    labels = {1: "1 thread", many: f"{many} threads"}
    workers = {}
    try:
        for n, label in labels.items():
            print(f"thread_counts: starting worker {label}", flush=True)
            workers[label] = UpdateWorker(
                label, REPO, n, logs, bool(cfg.get("reuse_freed_memory", True))
            )
        measured = measure_updates(workers, cfg, train, "thread_counts", clock="wall")
    finally:
        for worker in workers.values():
            worker.close()
    for row in measured["rows"]:
        row["ratio_many_vs_one"] = paired_ratio(
            row[labels[many]]["rounds"], row[labels[1]]["rounds"]
        )
    return {**measured, "threads": [1, many], "labels": [labels[1], labels[many]]}


# ---------------------------------------------------------------------------- 3: matrix game


def measure_matrix(workers: dict[str, UpdateWorker], cfg: DictConfig) -> dict:
    """ms per update of one seed at every checkout, and (``matrix.vectorized_seeds`` > 1)
    of this checkout's vectorised trainer, per seed: all candidates interleaved."""
    mcfg = cfg.matrix
    algorithms, n = list(mcfg.algorithms), int(mcfg.n_updates)
    n_vec = int(mcfg.get("vectorized_seeds") or 1)
    vec = f"{NOW} x{n_vec}"
    candidates = [(a, label, 1) for a in algorithms for label in workers]
    if n_vec > 1:
        candidates += [(a, NOW, n_vec) for a in algorithms]
    name = {(a, label, k): label if k == 1 else vec for a, label, k in candidates}
    dev = str(cfg.device)
    for algo, label, k in candidates:  # imports and first-call allocations, untimed
        workers[label].ask(cmd="matrix", algorithm=algo, n_updates=10, device=dev, seeds=k)
    ms = {c: [] for c in candidates}
    setup = {c: [] for c in candidates}
    for _, (algo, label, k) in interleaved(int(mcfg.rounds), candidates):
        out = workers[label].ask(cmd="matrix", algorithm=algo, n_updates=n, device=dev, seeds=k)
        # per seed: a vectorised update trains k seeds at once
        ms[algo, label, k].append(1e3 * (out["seconds"] - out["setup_seconds"]) / n / k)
        setup[algo, label, k].append(1e3 * out["setup_seconds"])
    rows = []
    for algo in algorithms:
        row = {"algorithm": algo}
        for c in [c for c in candidates if c[0] == algo]:
            row[name[c]] = {**summary(ms[c]), "setup_ms": statistics.median(setup[c])}
        if len(workers) == 2 and NOW in workers:
            other = [lb for lb in workers if lb != NOW][0]
            row["ratio_now_vs_against"] = paired_ratio(ms[algo, NOW, 1], ms[algo, other, 1])
        if n_vec > 1:
            row["ratio_vectorized_vs_single"] = paired_ratio(ms[algo, NOW, n_vec], ms[algo, NOW, 1])
        rows.append(row)
        labels = [name[c] for c in candidates if c[0] == algo]
        line = ", ".join(f"{lb} {row[lb]['median']:.2f}" for lb in labels)
        print(f"matrix game {algo}: ms/update per seed {line}", flush=True)
    return {"n_updates": n, "vectorized_seeds": n_vec, "rows": rows}


# ------------------------------------------------------------------------------ 4: collection


def training_collector(env_cfg: dict, n_envs: int, episodes: int, train: dict, algo: str, device):
    """The collection side of ``train()`` (env with the agents' primer, masked greedy +
    epsilon-greedy policy, the run's ``single`` collector: torchrl ``Collector`` and
    ``EpisodeAssembler`` with train.py's arguments); returns ``(collector, egreedy, env)``."""
    from resq_torchrl.training.builders import env_dims, make_env, make_loss
    from resq_torchrl.training.collectors import make_collector
    from resq_torchrl.training.trainer import add_agent_transforms, make_policies

    seed = int(train["seed"])
    torch.manual_seed(seed)
    with torch.random.fork_rng(devices=cuda_devices(device)):
        env = make_env(env_cfg, n_envs, device, seed=seed)
    loss = make_loss(load_config("algorithm", algo), train["agent"], env_dims(env), device)
    add_agent_transforms(env, loss)
    policy, egreedy = make_policies(loss, env, train["exploration"])
    cfg = {
        "n_envs": n_envs,
        "rollout_steps": int(train["rollout_steps"]),
        "episodes_per_batch": episodes,
        "env": env_cfg,
        "collector": {"type": "single"},
    }
    return make_collector(cfg, env, policy, device), egreedy, env


def measure_collection_case(env_name: str, n_envs: int, cfg: DictConfig, train: dict) -> dict:
    from resq_torchrl.data import EpisodeReplayBuffer
    from resq_torchrl.training.builders import make_env

    ccfg, device = cfg.collection, torch.device(cfg.device)
    env_cfg = env_config(env_name)
    max_steps = int(env_cfg["max_steps"])
    steps = int(ccfg.env_steps or max_steps)
    episodes = n_envs if ccfg.episodes_per_batch is None else int(ccfg.episodes_per_batch)
    collector, egreedy, env = training_collector(
        env_cfg, n_envs, episodes, train, str(ccfg.algorithm), device
    )
    buffer = EpisodeReplayBuffer(capacity=episodes, max_len=max_steps, batch_size=1, device=device)
    with torch.random.fork_rng(devices=cuda_devices(device)):
        plain = make_env(env_cfg, n_envs, device, seed=int(train["seed"]) + 1)
    state = {"td": plain.reset()}

    @torch.no_grad()
    def env_only() -> float:
        td = state["td"]
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            _, td = plain.step_and_maybe_reset(plain.rand_action(td))
        sync(device)
        state["td"] = td
        return n_envs * steps / (time.perf_counter() - start)

    batches = iter(collector)

    def collect() -> tuple[float, float]:
        sync(device)
        start = time.perf_counter()
        batch = next(batches)
        sync(device)
        collected = time.perf_counter() - start
        frames = int(batch.get(("collector", "mask")).sum())
        egreedy.step(frames)
        start = time.perf_counter()
        buffer.extend(batch)
        sync(device)
        stored = time.perf_counter() - start
        return frames / collected, frames / (collected + stored)

    # untimed: first batch (allocations, lazy storage), a few env steps
    collect()
    with torch.no_grad():
        td = state["td"]
        for _ in range(int(ccfg.warmup_steps)):
            _, td = plain.step_and_maybe_reset(plain.rand_action(td))
        state["td"] = td
    results = {"env_only": [], "collection": [], "collection_store": []}
    for _, which in interleaved(int(ccfg.rounds), ["env_only", "collection"]):
        if which == "env_only":
            results["env_only"].append(env_only())
        else:
            collected, stored = collect()
            results["collection"].append(collected)
            results["collection_store"].append(stored)
    collector.shutdown()
    plain.close()
    with contextlib.suppress(Exception):
        env.close()
    row = {
        "env": env_name,
        "n_envs": n_envs,
        "episodes_per_batch": episodes,
        "rollout_steps": int(train["rollout_steps"]),
        "env_steps_per_round": steps,
        "env_only_steps_per_s": summary(results["env_only"], best=max),
        "collection_frames_per_s": summary(results["collection"], best=max),
        "collection_store_frames_per_s": summary(results["collection_store"], best=max),
        "ratio": paired_ratio(results["collection"], results["env_only"]),
    }
    print(
        f"collection {env_name} x{n_envs}: env-only {row['env_only_steps_per_s']['median']:,.0f}"
        f" steps/s, collection {row['collection_frames_per_s']['median']:,.0f} frames/s "
        f"(ratio {row['ratio']:.2f})",
        flush=True,
    )
    return row


def measure_collection(cfg: DictConfig, train: dict) -> dict:
    rows = []
    for case in cfg.collection.cases:
        for n_envs in case.n_envs:
            rows.append(measure_collection_case(str(case.env), int(n_envs), cfg, train))
    return {"algorithm": str(cfg.collection.algorithm), "rows": rows}


# ----------------------------------------------------------------- 5: torchrl's QMIX reference

MATCHED = [
    "agents: a shared-parameter MLP per agent, observation -> {width} -> {width} -> actions "
    "(ReLU), no agent id: ours `type: mlp, hidden: [{width}, {width}], agent_id: false`, "
    "torchrl's `MultiAgentMLP(depth=2, num_cells={width}, share_params=True, "
    "centralised=False, activation_class=ReLU)`",
    "mixer: QMIX with mixing embed {embed} and one-layer (linear) hypernetworks: ours "
    "`hypernet_layers: 1`, torchrl's `QMixer` (which has only that form); both read the "
    "stacked agent observations (our VMAS `state`, the example's `('agents', 'observation')`)",
    "same batch: {transitions} VMAS balance transitions ({n_envs} envs x {steps} random-action "
    "steps), one-step TD targets (ours `td_lambda: 0`, torchrl's `TD0`), same gamma",
    "same optimizer: Adam, lr {lr}, multi-tensor (`foreach=True`); one update = forward + "
    "backward + step, no gradient clipping, no target update",
]
DIFFERS = [
    "targets: ours double-Q (the online agents pick the next action, the target agents value "
    "it: one extra agent forward on the next step); torchrl's the max of the target agents",
    "ours applies the action masks (all True on VMAS) to the greedy next action and checks "
    "its inputs; torchrl's reads no mask",
    "the example uses Tanh agents and Adam without `foreach` (changed here to match); its "
    "mixer reads `('agents', 'observation')` (here `state`, the same numbers)",
]


def measure_reference(cfg: DictConfig, train: dict) -> dict:
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torch import nn
    from torchrl.modules import MultiAgentMLP, QValueModule
    from torchrl.modules.models.multiagent import QMixer as TorchRLQMixer
    from torchrl.objectives import ValueEstimators
    from torchrl.objectives.multiagent import QMixerLoss

    from resq_torchrl.training.builders import env_dims, make_env, make_loss, make_optimizer
    from resq_torchrl.training.builders import total_loss as our_total

    rcfg, device = cfg.reference, torch.device(cfg.device)
    env_cfg = env_config(str(rcfg.env))
    n_envs, steps, width = int(rcfg.n_envs), int(rcfg.steps), int(rcfg.width)
    embed, lr = int(rcfg.mixing_embed_dim), float(rcfg.lr)
    seed = int(cfg.seed)
    with torch.random.fork_rng(devices=cuda_devices(device)):
        env = make_env(env_cfg, n_envs, device, seed=seed)
        with torch.no_grad():
            rollout = env.rollout(steps, break_when_any_done=False, auto_reset=True)
    env.close()
    dims = env_dims(env)
    info = [k for k in rollout.keys(True) if isinstance(k, tuple) and "info" in k]
    data = rollout.exclude(*info).reshape(-1)
    algo = dict(
        load_config("algorithm", "qmix"),
        mixing_embed_dim=embed,
        hypernet_layers=1,
        td_lambda=0.0,
    )
    gamma = float(algo["gamma"])
    torch.manual_seed(seed)
    agent = {"type": "mlp", "hidden": [width] * int(rcfg.depth), "agent_id": False}
    ours = make_loss(algo, agent, dims, device)
    ours_opt = make_optimizer(ours, "adam", lr)

    net = MultiAgentMLP(
        n_agent_inputs=dims.obs_dim,
        n_agent_outputs=dims.n_actions,
        n_agents=dims.n_agents,
        centralised=False,
        share_params=True,
        device=device,
        depth=int(rcfg.depth),
        num_cells=width,
        activation_class=nn.ReLU,
    )
    qnet = TensorDictSequential(
        TensorDictModule(
            net, in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")]
        ),
        QValueModule(
            action_value_key=("agents", "action_value"),
            out_keys=[
                ("agents", "action"),
                ("agents", "action_value"),
                ("agents", "chosen_action_value"),
            ],
            action_space="categorical",
        ),
    )
    mixer = TensorDictModule(
        TorchRLQMixer(
            state_shape=(dims.state_dim,),
            mixing_embed_dim=embed,
            n_agents=dims.n_agents,
            device=device,
        ),
        in_keys=[("agents", "chosen_action_value"), "state"],
        out_keys=["chosen_action_value"],
    )
    theirs = QMixerLoss(qnet, mixer, delay_value=True, action_space="categorical")
    theirs.set_keys(
        action_value=("agents", "action_value"),
        local_value=("agents", "chosen_action_value"),
        global_value="chosen_action_value",
        action=("agents", "action"),
    )
    theirs.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
    theirs_opt = torch.optim.Adam(theirs.parameters(), lr, foreach=True)

    sides = {
        "ours": (ours, ours_opt, our_total),
        "torchrl": (theirs, theirs_opt, lambda out: out["loss"]),
    }

    def update(side: str) -> float:
        loss, opt, total = sides[side]
        batch = data.clone()
        sync(device)
        start = time.perf_counter()
        out = loss(batch)
        opt.zero_grad()
        total(out).backward()
        opt.step()
        sync(device)
        return time.perf_counter() - start

    for side in sides:  # untimed warm-up
        update(side)
    ms = {side: [] for side in sides}
    for _, side in interleaved(int(rcfg.rounds), list(sides)):
        ms[side].append(1e3 * update(side))
    params = {s: sum(p.numel() for p in loss.parameters()) for s, (loss, _, _) in sides.items()}
    fill = {
        "width": width,
        "embed": embed,
        "transitions": data.numel(),
        "n_envs": n_envs,
        "steps": steps,
        "lr": lr,
    }
    result = {
        "env": str(rcfg.env),
        "transitions": data.numel(),
        "dims": {"n_agents": dims.n_agents, "n_actions": dims.n_actions, "obs": dims.obs_dim},
        "ours": {**summary(ms["ours"]), "params": params["ours"]},
        "torchrl": {**summary(ms["torchrl"]), "params": params["torchrl"]},
        "ratio_ours_vs_torchrl": paired_ratio(ms["ours"], ms["torchrl"]),
        "matched": [m.format(**fill) for m in MATCHED],
        "differs": DIFFERS,
    }
    print(
        f"torchrl QMIX reference: ours {result['ours']['median']:.1f} ms, torchrl "
        f"{result['torchrl']['median']:.1f} ms (ratio {result['ratio_ours_vs_torchrl']:.2f})",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------- 6: replay memory


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def measure_memory(cfg: DictConfig, train: dict) -> dict:
    """Store real episodes of ``memory.env`` (the training collector) in an
    :class:`EpisodeReplayBuffer` of exactly that many episodes; compare its storage with
    the raw bytes of the stored keys at the real steps, and with the distinct content (a
    ``("next", k)`` entry equal to the following step's ``k`` counted once per episode)."""
    from resq_torchrl.data import EpisodeReplayBuffer

    mcfg, device = cfg.memory, torch.device(cfg.device)
    env_cfg = env_config(str(mcfg.env))
    n_envs, max_len = int(mcfg.n_envs), int(env_cfg["max_steps"])
    collector, _, env = training_collector(
        env_cfg, n_envs, n_envs, train, str(cfg.collection.algorithm), device
    )
    batches = []
    for batch in collector:
        batches.append(batch)
        if len(batches) == int(mcfg.batches):
            break
    collector.shutdown()
    n_episodes = sum(b.shape[0] for b in batches)
    buffer = EpisodeReplayBuffer(capacity=n_episodes, max_len=max_len, batch_size=1, device=device)
    for batch in batches:
        buffer.extend(batch)
    stored = buffer.buffer.storage._storage  # [capacity, slots] TensorDict, all of it filled
    n_agents = int(stored.get(("agents", "observation")).shape[2])
    mask = stored.get(("collector", "mask"))
    real_steps = int(mask.sum())
    keys = sorted(stored.keys(True, True), key=str)
    storage_bytes = sum(nbytes(stored.get(k)) for k in keys)
    slots = n_episodes * stored.shape[1]  # max_len, + 1 for the last step's next entries
    shifted = {k if len(k) > 1 else k[0] for k in buffer.shifted or ()}
    follows = mask[:, 1:] & mask[:, :-1]  # steps t whose step t + 1 is real
    rows, raw, unique = [], 0, 0
    for key in keys:
        value = stored.get(key)
        per_step = nbytes(value) / slots
        kind = "data"
        root = None
        if isinstance(key, tuple) and key[0] == "next":
            root = key[1] if len(key) == 2 else key[1:]
        if key == "index":
            kind = "bookkeeping (the replay's own index)"
        elif root in keys and torch.equal(value[:, :-1][follows], stored.get(root)[:, 1:][follows]):
            name = "/".join(root) if isinstance(root, tuple) else root
            kind = f"copy of step t+1's {name}"
        key_raw = per_step * real_steps
        bookkeeping = kind.startswith("bookkeeping")
        key_unique = 0 if bookkeeping else per_step * real_steps
        if kind.startswith("copy"):
            key_unique = per_step * n_episodes  # the episode's last "next" is new
        elif key in shifted:  # stored once; the slot after an episode holds its last next
            key_unique = per_step * (real_steps + n_episodes)
        raw += 0 if bookkeeping else key_raw
        unique += key_unique
        rows.append(
            {
                "key": "/".join(key) if isinstance(key, tuple) else key,
                "dtype": str(value.dtype).replace("torch.", ""),
                "bytes_per_agent_step": per_step / n_agents,
                "kind": kind,
            }
        )
    per_agent_step = storage_bytes / (slots * n_agents)
    unique_per_agent_step = unique / (real_steps * n_agents)
    copies = sum(r["bytes_per_agent_step"] for r in rows if r["kind"].startswith("copy")) * (
        slots * n_agents
    )
    result = {
        "env": str(mcfg.env),
        "episodes": n_episodes,
        "max_len": max_len,
        "n_agents": n_agents,
        "real_steps": real_steps,
        "padding_fraction": 1 - real_steps / slots,
        "storage_bytes": storage_bytes,
        "bytes_per_stored_agent_step": per_agent_step,
        "raw_bytes_stored_keys_real_steps": raw,
        "ratio_storage_vs_stored_keys": storage_bytes / raw,
        "unique_bytes": unique,
        "raw_bytes_per_agent_step": unique_per_agent_step,
        "ratio": storage_bytes / unique,
        "next_copies_fraction": copies / storage_bytes,
        "keys": rows,
    }
    result["why"] = memory_verdict(result)
    print(
        f"replay memory: {per_agent_step:.0f} bytes per stored agent-step, raw "
        f"{unique_per_agent_step:.0f} (ratio {result['ratio']:.2f})",
        flush=True,
    )
    with contextlib.suppress(Exception):
        env.close()
    return result


def memory_verdict(m: dict) -> str:
    if m["ratio"] <= 1.2:
        return f"{m['ratio']:.2f}x the raw bytes: within the 1.2x target."
    parts = [f"{m['ratio']:.2f}x the raw bytes, above the 1.2x target:"]
    if m["next_copies_fraction"] > 0.05:
        parts.append(
            f"{100 * m['next_copies_fraction']:.0f}% of the storage holds `next` entries that "
            "copy the following step's (every observation, state, mask and last action is "
            "stored twice, as step t+1 and as step t's `next`)"
        )
    if m["padding_fraction"] > 0.05:
        parts.append(
            f"{100 * m['padding_fraction']:.0f}% of the stored steps are padding (every "
            "episode is stored as max_len steps)"
        )
    return " ".join(parts[:1]) + " " + "; ".join(parts[1:]) + "."


# ---------------------------------------------------------------------------------- markdown


def _ms(x: dict | None) -> str:
    return "-" if x is None else f"{x['median']:.1f} ({x['best']:.1f})"


def _rate(x: dict) -> str:
    return f"{x['median']:,.0f} ({x['best']:,.0f})"


def _clock_note(up: dict) -> str:
    if up.get("clock", "wall") == "cpu":
        return (
            " Times are the update workers' process CPU time (`clock=cpu`), not wall time: "
            "on a shared machine they leave out the time other processes held the cores."
        )
    return ""


def _updates_table(up: dict, rev: str | None) -> list[str]:
    """The markdown table of one :func:`measure_updates` result."""
    if rev:
        lines = [
            f"| method | ms now | ms at {rev} | now / {rev} | / qmix now | / qmix at {rev} |",
            "|---|---|---|---|---|---|",
        ]
    else:
        lines = ["| method | ms | / qmix |", "|---|---|---|"]
    for row in up["rows"]:
        q = row[NOW].get("ratio_to_qmix")
        qs = "-" if q is None else f"{q:.2f}"
        if rev:
            qr = row[rev].get("ratio_to_qmix")
            lines.append(
                f"| {row['algorithm']} | {_ms(row[NOW])} | {_ms(row[rev])} | "
                f"{row['ratio_now_vs_against']:.2f} | {qs} | "
                f"{'-' if qr is None else f'{qr:.2f}'} |"
            )
        else:
            lines.append(f"| {row['algorithm']} | {_ms(row[NOW])} | {qs} |")
    return lines


def write_markdown(result: dict, path: Path) -> None:
    m = result["machine"]
    against = result.get("against")
    rev = against["label"] if against else None
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/throughput.py` (issue 12); regenerate with the command below. "
        "Times are medians over rounds, with the best (min time, max rate) in brackets; "
        "candidates run interleaved round by round (A, B, C, A, B, C, ...), one at a time, so "
        "ratios are measured within one run. Ratios are medians over rounds of the ratio of "
        "the two values measured in the same round. What bounds these numbers, and what "
        "was tried, is in `docs/speed.md` (written by hand).",
        "",
        f"    {result['command']}",
        "",
        f"- date: {result['date']}; wall time {result['wall_seconds'] / 60:.1f} min",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable)"
        + (f", GPU {m['gpu']}" if "gpu" in m else "")
        + f"; device {m['device']}",
        f"- python {m['python']}, torch {m['torch']}, torchrl {m['torchrl']}, tensordict "
        f"{m['tensordict']}" + (f", vmas {m['vmas']}" if "vmas" in m else ""),
        f"- torch threads: {m['torch_threads']} here and in the update workers "
        "(`OMP_NUM_THREADS` too): every workload measured is a one-thread workload"
        + (", but for the thread-count section" if "thread_counts" in result else ""),
        *(
            [
                "- allocator of the update workers (`reuse_freed_memory`, `resq_torchrl/cli.py`): "
                + "; ".join(f"`{k}`: {v}" for k, v in result["allocators"].items())
            ]
            if result.get("allocators")
            else []
        ),
        f"- load average (1 min): {m['load_average_start']:.2f} at start, "
        f"{m['load_average_end']:.2f} at the end"
        + (
            f" on {m['cores']} cores: **the machine was shared** with other work during "
            "the run, so absolute times are inflated and noisy; the interleaved ratios are "
            "the numbers to read"
            if m["shared"]
            else ""
        ),
    ]
    if against:
        lines.append(
            f"- against: `{against['rev']}` = {against['sha']} (a git worktree of it; "
            "`now` is the working tree"
            + (f" at {result['head']}" if result.get("head") else "")
            + (", with uncommitted changes" if result.get("dirty") else "")
            + ")"
        )
    up = result.get("updates")
    if up:
        b = up["batch"]
        lines += [
            "",
            "## ms per update, predator-prey reference batch",
            "",
            f"{b['episodes']} whole episodes x {b['steps']} steps x {b['n_agents']} agents, "
            f"{b['n_actions']} actions, observation {b['obs_dim']} and state "
            f"{b['state_dim']} features (seeded synthetic batch with the reference "
            "predator-prey env's dims and masks, `benchmarks/update_worker.py`); GRU agents "
            f"`{json.dumps(up['agent'])}`; TD(lambda) as configured; one update = loss "
            f"forward + backward + {up['optimizer']} step. {len(up['rows'][0][NOW]['rounds'])}"
            f" rounds.{_clock_note(up)}",
            "",
            *_updates_table(up, rev),
        ]
    short = result.get("short_updates")
    if short:
        b = short["batch"]
        low, high = b["early_lengths"]
        lines += [
            "",
            "## ms per update, short episodes",
            "",
            f"The same, on {b['episodes']} episodes of which one runs {b['steps']} steps and "
            f"the others end after {low}-{high} (a late sample of a run whose policy has "
            "learned to catch: CW-QMIX's predator-prey episodes shorten to about 40 steps), "
            "padded to the longest: the unrolls compute only the real steps (packed "
            "sequences, `resq_torchrl/modules/rnn.py`), where the revision before them "
            f"computed every step. {len(short['rows'][0][NOW]['rounds'])} rounds."
            f"{_clock_note(short)}",
            "",
            *_updates_table(short, rev),
        ]
    tc = result.get("thread_counts")
    if tc:
        one, many = tc["labels"]
        lines += [
            "",
            "## Threads: one worker per thread count",
            "",
            f"The reference batch's update on {m['device']} in a worker of {one} and one of "
            f"{many} (every usable core), interleaved, wall time: what `train.py`'s "
            "`threads=auto` rests on (every usable core on the CPU, one thread on CUDA). On a "
            "machine shared with other work the threads wait for each other and the ratio "
            f"says so. {len(tc['rows'][0][one]['rounds'])} rounds.",
            "",
            f"| method | ms, {one} | ms, {many} | {many} / {one} |",
            "|---|---|---|---|",
        ]
        for row in tc["rows"]:
            lines.append(
                f"| {row['algorithm']} | {_ms(row[one])} | {_ms(row[many])} | "
                f"{row['ratio_many_vs_one']:.2f} |"
            )
    mg = result.get("matrix")
    if mg:
        lines += [
            "",
            "## ms per update, matrix game",
            "",
            f"`train_matrix_game` with each checkout's `configs/matrix_game.yaml` (the paper's "
            f"game, batch 64, MLP agents), {mg['n_updates']} updates; the time of a run with no "
            "update (set-up, evaluation) subtracted.",
            "",
        ]
        n_vec = int(mg.get("vectorized_seeds", 1))
        vec = f"{NOW} x{n_vec}"
        if n_vec > 1:  # lines[-2] is the paragraph above, lines[-1] the blank line after it
            lines[-2] += (
                f" With {n_vec} seeds as one vectorised model (`train_matrix_game_vectorized`), "
                "the time per update is divided by the seeds: the cost of one seed's update."
            )
        head = ["method", "ms now"] + ([f"ms at {rev}", f"now / {rev}"] if rev else [])
        if n_vec > 1:
            head += [f"ms per seed, {n_vec} vectorised", "vectorised / now"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in mg["rows"]:
            cells = [row["algorithm"], _ms(row[NOW])]
            if rev:
                cells += [_ms(row[rev]), f"{row['ratio_now_vs_against']:.2f}"]
            if n_vec > 1:
                cells += [_ms(row[vec]), f"{row['ratio_vectorized_vs_single']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    co = result.get("collection")
    if co and co["rows"]:
        lines += [
            "",
            "## Collection versus env-only",
            "",
            "env-only: random available actions, `step_and_maybe_reset` (auto-reset), the env "
            "with train.py's transforms. Collection: the training collector of `train()` "
            f"({co['algorithm']}'s agents, masked greedy + epsilon-greedy, torchrl `Collector` "
            "and `EpisodeAssembler` (padded episodes), `rollout_steps` from train.yaml), no "
            "updates; one collector batch per round. '+ store' adds "
            "`EpisodeReplayBuffer.extend`.",
            "",
            "| env | envs | episodes per batch | env-only steps/s | collection frames/s | "
            "collection / env-only | collection + store frames/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in co["rows"]:
            lines.append(
                f"| {r['env']} | {r['n_envs']} | {r['episodes_per_batch']} | "
                f"{_rate(r['env_only_steps_per_s'])} | {_rate(r['collection_frames_per_s'])} |"
                f" {r['ratio']:.2f} | {_rate(r['collection_store_frames_per_s'])} |"
            )
    ref = result.get("reference")
    if ref:
        lines += [
            "",
            "## External reference: torchrl's multi-agent QMIX",
            "",
            f"torchrl's `QMixerLoss` + `MultiAgentMLP` + torchrl's `QMixer` (as in torchrl's "
            f"`examples/multiagent/qmix_vdn.py`) against our `qmix`, on {ref['transitions']} "
            f"{ref['env']} transitions ({ref['dims']['n_agents']} agents, "
            f"{ref['dims']['n_actions']} actions, {ref['dims']['obs']} observation features)."
            f" {len(ref['ours']['rounds'])} rounds.",
            "",
            "| | ms per update | parameters |",
            "|---|---|---|",
            f"| ours (`qmix`) | {_ms(ref['ours'])} | {ref['ours']['params']:,} |",
            f"| torchrl | {_ms(ref['torchrl'])} | {ref['torchrl']['params']:,} |",
            "",
            f"ours / torchrl: **{ref['ratio_ours_vs_torchrl']:.2f}**.",
            "",
            "Matched:",
            "",
            *[f"- {x}" for x in ref["matched"]],
            "",
            "Differs:",
            "",
            *[f"- {x}" for x in ref["differs"]],
        ]
    mem = result.get("memory")
    if mem:
        lines += [
            "",
            "## Replay memory",
            "",
            f"`EpisodeReplayBuffer` holding {mem['episodes']} real {mem['env']} episodes "
            f"(training collector, capacity = {mem['episodes']} episodes, max_len "
            f"{mem['max_len']}, {mem['n_agents']} agents; {100 * mem['padding_fraction']:.1f}% "
            "of the stored steps are padding).",
            "",
            "| | bytes per agent-step |",
            "|---|---|",
            f"| storage / (episodes x max_len x agents) | {mem['bytes_per_stored_agent_step']:.1f}"
            " |",
            "| raw: the stored keys at the real steps, each step's content once (a `next` "
            f"copy of step t+1 counted only at the episode's end) | "
            f"{mem['raw_bytes_per_agent_step']:.1f} |",
            "",
            f"Ratio **{mem['ratio']:.2f}x** (storage versus the stored keys at the real steps, "
            f"copies included: {mem['ratio_storage_vs_stored_keys']:.2f}x). {mem['why']}",
            "",
            "| key | dtype | bytes per agent-step | kind |",
            "|---|---|---|---|",
            *[
                f"| {k['key']} | {k['dtype']} | {k['bytes_per_agent_step']:.2f} | {k['kind']} |"
                for k in mem["keys"]
            ],
        ]
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# -------------------------------------------------------------------------------------- main


def apply_presets(cfg: DictConfig) -> DictConfig:
    """``quick=true`` / ``gpu=true`` merge ``quick_settings`` / ``gpu_settings`` over the
    config; values given on the command line win over both."""
    given = []
    with contextlib.suppress(Exception):
        from hydra.core.hydra_config import HydraConfig

        given = [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    merged = cfg
    for flag in ("quick", "gpu"):
        if cfg.get(flag):
            merged = OmegaConf.merge(merged, cfg[f"{flag}_settings"])
    for key in given:
        if key not in ("quick", "gpu") and OmegaConf.select(cfg, key) is not None:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def run(cfg: DictConfig) -> dict:
    started = time.time()
    cfg = apply_presets(cfg)
    device = check_device(cfg.device)
    for section in ("updates", "short_updates", "matrix", "thread_counts"):
        for name in (cfg[section].algorithms if section in cfg else None) or []:
            cli.check_choice("algorithm", name)  # an unknown one lists the algorithms
    counts = (
        "rounds",
        "updates.rounds",
        "matrix.rounds",
        "collection.rounds",
        "thread_counts.rounds",
    )
    for key in (*counts, "updates.episodes", "updates.steps", "short_updates.episodes"):
        at_least(key, OmegaConf.select(cfg, key), 1)
    for key in ("out", "markdown"):  # before the measurements, which would be lost
        check_writable(key, cfg.get(key))
    clock = cfg.get("clock", "wall")
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and device.type != "cpu":
        raise ConfigError(
            f"clock=cpu reads the host's CPU time, which says nothing of work on "
            f"{device.type}: use clock=wall there"
        )
    threads = torch.get_num_threads()
    train = train_defaults()
    against = None if cfg.against in (None, "") else str(cfg.against)
    command = " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
    result: dict = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_facts(device),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    with contextlib.suppress(ConfigError):
        result["head"] = git("rev-parse", "--short", "HEAD")
        result["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    need_workers = any(
        list(cfg[k].algorithms) for k in ("updates", "short_updates", "matrix") if k in cfg
    )
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="throughput_logs_")))
        workers: dict[str, UpdateWorker] = {}
        if need_workers:
            checkouts = {NOW: REPO}
            if against is not None:
                path, sha = stack.enter_context(worktree(against))
                label = against if against != NOW else f"rev_{sha[:7]}"
                result["against"] = {"rev": against, "sha": sha, "label": label}
                checkouts[label] = path
            for label, path in checkouts.items():
                print(f"starting worker {label} (resq_torchrl of {path})", flush=True)
                workers[label] = UpdateWorker(
                    label, path, threads, logs, bool(cfg.get("reuse_freed_memory", True))
                )
                stack.callback(workers[label].close)
            result["allocators"] = {k: w.info.get("allocator", "?") for k, w in workers.items()}
        if list(cfg.updates.algorithms):
            result["updates"] = measure_updates(workers, cfg, train)
        if "short_updates" in cfg and list(cfg.short_updates.algorithms):
            result["short_updates"] = measure_updates(workers, cfg, train, "short_updates")
        if list(cfg.matrix.algorithms):
            result["matrix"] = measure_matrix(workers, cfg)
        if "thread_counts" in cfg and list(cfg.thread_counts.algorithms):
            if cli.usable_cores() > 1:
                result["thread_counts"] = measure_thread_counts(cfg, train, logs)
            else:
                print("thread_counts: skipped (one usable core)", flush=True)
    if list(cfg.collection.cases):
        result["collection"] = measure_collection(cfg, train)
    if cfg.reference.env:
        result["reference"] = measure_reference(cfg, train)
    if cfg.memory.env:
        result["memory"] = measure_memory(cfg, train)
    result["wall_seconds"] = time.time() - started
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    m = result["machine"]
    m["load_average_end"] = load_end
    # this run keeps about one core busy: a load well above that is other work
    m["shared"] = max(m["load_average_start"] or 0.0, load_end) > 1.5
    return result


@cli.main("throughput")
def main(cfg: DictConfig) -> None:
    result = run(cfg)
    settings = apply_presets(cfg)  # quick=true and gpu=true write under runs/, not docs/
    out, md = Path(settings.out), Path(settings.markdown)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    write_markdown(result, md)
    print(md.read_text())
    print(f"wall time {result['wall_seconds']:.0f} s; wrote {out} and {md}", flush=True)


def hydra_style(argv: list[str]) -> list[str]:
    """``--quick`` -> ``quick=true``, ``--against REV`` / ``--against=REV`` -> ``against=REV``."""
    out, args = [], iter(argv)
    for arg in args:
        if arg == "--quick":
            out.append("quick=true")
        elif arg == "--against":
            out.append(f"against={next(args, '')}")
        elif arg.startswith("--against="):
            out.append("against=" + arg.split("=", 1)[1])
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    sys.argv[1:] = hydra_style(sys.argv[1:])
    main()
