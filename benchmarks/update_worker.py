"""A long-lived timing worker for ``benchmarks/throughput.py``: times updates of the code of
one checkout, on request.

    PYTHONPATH=<checkout> python benchmarks/update_worker.py      (started by throughput.py)

The parent starts one worker per revision (the working tree, and a ``git worktree`` of
``against=REV``) and sends one JSON request per line on stdin; each answer is one JSON line
on stdout (library output is moved to stderr). The parent interleaves its requests across
workers and methods round by round and runs one request at a time, so every worker is
measured on an otherwise idle process.

Only APIs that exist in every revision compared are used: ``make_loss``, ``EnvDims``,
``total_loss`` and ``make_optimizer`` of ``resq_torchrl.training.builders``,
``train_matrix_game`` of ``resq_torchrl.training.matrix_game``, and the checkout's own
``configs/algorithm/*.yaml`` and ``configs/matrix_game.yaml``. This file imports nothing of
the working tree: ``resq_torchrl`` is the checkout's.

Requests (``cmd``):

- ``setup``: ``algorithms``, ``agent`` (agent config), ``batch`` (arguments of
  :func:`reference_batch`), ``device``, ``seed``, ``optimizer``, ``lr``, ``warmup`` ->
  builds every loss (TD(lambda) as its config says) with its optimizer and the batch, runs
  ``warmup`` untimed updates each; answers the parameter counts.
- ``update``: ``algorithm`` -> the seconds of one update (forward + backward + optimizer
  step), synchronized on CUDA: ``seconds`` of wall time and ``cpu_seconds`` of this
  process's CPU time (all its threads).
- ``matrix``: ``algorithm``, ``n_updates``, ``device``, optional ``seeds`` ->
  ``train_matrix_game`` with the checkout's ``configs/matrix_game.yaml`` (``seeds`` > 1:
  ``train_matrix_game_vectorized`` over seeds ``0..seeds-1``): the seconds of
  ``n_updates`` updates and of 0 updates (set-up and evaluation, subtracted by the parent).
- ``info``: the library's path, torch version, thread count and allocator (the checkout's
  own ``resq_torchrl.cli.reuse_freed_memory`` when it has one and ``BENCH_REUSE_FREED_MEMORY=1``).
- ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("RL_WARNINGS", "False")

import torch  # noqa: E402
from tensordict import TensorDict  # noqa: E402


def reference_batch(
    episodes: int = 32,
    steps: int = 200,
    n_agents: int = 8,
    n_actions: int = 6,
    obs_dim: int = 50,
    state_dim: int = 200,
    seed: int = 0,
    device: str | torch.device = "cpu",
    catch_prob: float = 0.2,
    early_end_fraction: float = 0.25,
    early_lengths: tuple[int, int] | None = None,
) -> TensorDict:
    """A seeded ``[episodes, steps]`` batch of whole predator-prey-like episodes, laid out as
    :class:`~resq_torchrl.data.EpisodeReplayBuffer` samples them: each row one episode from
    ``t = 0`` (``is_init`` only there), ``("next", ...)`` of step ``t`` equal to step
    ``t + 1``, padding after the episode's end (``("collector", "mask")`` False).

    As the reference predator-prey env (8 predators, 6 actions: up, down, left, right, stay,
    catch; 5x5x2 binary observation windows, a 10x10x2 binary state): the four moves and stay
    are always available, catch with probability ``catch_prob`` (a prey next to the agent);
    actions uniform among the available ones; last actions one-hot; sparse rewards (+10
    captures, -2 lone catches). Most episodes are truncated at ``steps``; a fraction
    ``early_end_fraction`` ends earlier, terminated (every prey caught), after a number of
    steps uniform in ``early_lengths`` (default ``[steps // 2, steps]``); the first episode
    always runs the full ``steps``."""
    g = torch.Generator().manual_seed(seed)
    b, t, n, a = episodes, steps, n_agents, n_actions
    obs = (torch.rand(b, t + 1, n, obs_dim, generator=g) < 0.1).float()
    state = (torch.rand(b, t + 1, state_dim, generator=g) < 0.08).float()
    mask = torch.ones(b, t + 1, n, a, dtype=torch.bool)
    mask[..., a - 1] = torch.rand(b, t + 1, n, generator=g) < catch_prob
    scores = torch.rand(b, t + 1, n, a, generator=g).masked_fill(~mask, -1.0)
    action = scores.argmax(-1)  # uniform among the available actions
    last = torch.nn.functional.one_hot(action, a).float().roll(1, dims=1)
    last[:, 0] = 0.0
    lengths = torch.full((b,), t)
    early = torch.rand(b, generator=g) < early_end_fraction
    early[0] = False  # one full-length episode: the sample keeps all ``steps`` steps
    low, high = early_lengths if early_lengths is not None else (max(1, t // 2), t)
    high = min(int(high), t)  # never past the sample's length
    low = max(1, min(int(low), high))
    lengths[early] = torch.randint(low, high + 1, (int(early.sum()),), generator=g)
    step = torch.arange(t).expand(b, t)
    real = step < lengths.unsqueeze(-1)
    end = step == (lengths - 1).unsqueeze(-1)
    terminated = (end & early.unsqueeze(-1)).unsqueeze(-1)
    truncated = (end & ~early.unsqueeze(-1)).unsqueeze(-1)
    u = torch.rand(b, t, generator=g)
    reward = torch.where(u < 0.01, 10.0, torch.where(u < 0.03, -2.0, 0.0)).unsqueeze(-1)
    reward = reward * real.unsqueeze(-1)
    episode_reward = reward.cumsum(1)
    is_init = torch.zeros(b, t + 1, 1, dtype=torch.bool)
    is_init[:, 0] = True
    false = torch.zeros(b, t, 1, dtype=torch.bool)
    td = TensorDict(
        {
            ("agents", "observation"): obs[:, :t],
            ("agents", "last_action"): last[:, :t],
            ("agents", "action"): action[:, :t],
            ("agents", "action_mask"): mask[:, :t],
            "state": state[:, :t],
            "is_init": is_init[:, :t],
            "done": false,
            "terminated": false.clone(),
            "truncated": false.clone(),
            "episode_reward": torch.cat([torch.zeros(b, 1, 1), episode_reward[:, :-1]], 1),
            ("collector", "mask"): real,
            ("next", "agents", "observation"): obs[:, 1:],
            ("next", "agents", "last_action"): last[:, 1:],
            ("next", "agents", "action_mask"): mask[:, 1:],
            ("next", "state"): state[:, 1:],
            ("next", "is_init"): is_init[:, 1:],
            ("next", "reward"): reward,
            ("next", "episode_reward"): episode_reward,
            ("next", "terminated"): terminated,
            ("next", "truncated"): truncated,
            ("next", "done"): terminated | truncated,
        },
        batch_size=[b, t],
    )
    return td.to(device)


#: the agents of the reference batch's updates (train.yaml's GRU agents)
REFERENCE_AGENT = {"type": "gru", "hidden_dim": 64, "last_action": True, "agent_id": True}


def algorithm_names(root: Path) -> list[str]:
    """The methods of ``root/configs/algorithm``, sorted."""
    return sorted(p.stem for p in (root / "configs" / "algorithm").glob("*.yaml"))


def reference_loss(algorithm: str, root: Path, seed: int = 0):
    """(loss, rmsprop optimizer) of ``root/configs/algorithm/<algorithm>.yaml`` for
    :func:`reference_batch`'s default dims (8 agents, 6 actions, observation 50, state 200)
    with :data:`REFERENCE_AGENT`, TD(lambda) as configured, seeded: what the one-process
    tools (``packed_unroll.py``, ``update_profile.py``) time."""
    from torchrl.objectives import ValueEstimators

    from resq_torchrl.training.builders import EnvDims, make_loss, make_optimizer

    cfg = _load_yaml(root / "configs" / "algorithm" / f"{algorithm}.yaml")
    torch.manual_seed(seed)
    loss = make_loss(cfg, REFERENCE_AGENT, EnvDims(8, 6, 50, 200), "cpu")
    if float(cfg.get("td_lambda", 0.0)) > 0:
        loss.make_value_estimator(
            ValueEstimators.TDLambda, gamma=float(cfg["gamma"]), lmbda=float(cfg["td_lambda"])
        )
    return loss, make_optimizer(loss, "rmsprop", 1e-3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    return cfg


class Worker:
    """The state of one worker: its losses, optimizers and batch."""

    def __init__(self) -> None:
        self.root = Path(os.environ.get("BENCH_CHECKOUT", ".")).resolve()
        self.losses: dict = {}
        self.batch = None
        self.device = torch.device("cpu")
        self.allocator = "system default"

    def algorithm(self, name: str) -> dict:
        return _load_yaml(self.root / "configs" / "algorithm" / f"{name}.yaml")

    def info(self, req: dict) -> dict:
        import resq_torchrl

        return {
            "library": str(Path(resq_torchrl.__file__).resolve().parent),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "allocator": self.allocator,
        }

    def setup(self, req: dict) -> dict:
        from torchrl.objectives import ValueEstimators

        from resq_torchrl.training.builders import EnvDims, make_loss, make_optimizer

        self.device = torch.device(req.get("device", "cpu"))
        spec = dict(req["batch"])
        self.batch = reference_batch(**spec, device=self.device)
        dims = EnvDims(
            n_agents=spec["n_agents"],
            n_actions=spec["n_actions"],
            obs_dim=spec["obs_dim"],
            state_dim=spec["state_dim"],
        )
        params = {}
        for name in req["algorithms"]:
            algo = self.algorithm(name)
            torch.manual_seed(int(req.get("seed", 0)))
            loss = make_loss(algo, req["agent"], dims, self.device)
            if float(algo.get("td_lambda", 0.0)) > 0:
                loss.make_value_estimator(
                    ValueEstimators.TDLambda,
                    gamma=float(algo["gamma"]),
                    lmbda=float(algo["td_lambda"]),
                )
            optimizer = make_optimizer(loss, req["optimizer"], float(req["lr"]))
            self.losses[name] = (loss, optimizer)
            params[name] = sum(p.numel() for p in loss.parameters())
            for _ in range(int(req.get("warmup", 1))):
                self.update({"algorithm": name})
        return {"params": params}

    def update(self, req: dict) -> dict:
        from resq_torchrl.training.builders import total_loss

        loss, optimizer = self.losses[req["algorithm"]]
        data = self.batch.clone()  # the loss writes into its input: a fresh copy, untimed
        torch.manual_seed(0)  # the distributional losses draw their quantile fractions
        _sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        losses = loss(data)
        optimizer.zero_grad()
        total_loss(losses).backward()
        optimizer.step()
        _sync(self.device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return {
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "loss": float(total_loss(losses).detach()),
        }

    def matrix(self, req: dict) -> dict:
        from resq_torchrl.training import matrix_game

        seeds = int(req.get("seeds", 1))
        if seeds > 1 and not hasattr(matrix_game, "train_matrix_game_vectorized"):
            raise ValueError(f"{self.root} has no train_matrix_game_vectorized")

        def train_matrix_game(cfg):
            if seeds > 1:
                return matrix_game.train_matrix_game_vectorized(cfg, range(seeds))
            return matrix_game.train_matrix_game(cfg)

        cfg = _load_yaml(self.root / "configs" / "matrix_game.yaml")
        cfg.update(
            algorithm=self.algorithm(req["algorithm"]),
            device=req.get("device", "cpu"),
            progress=False,
            json_out=None,
            plot=None,
        )
        device = torch.device(cfg["device"])
        out = {}
        for key, n in (("setup_seconds", 0), ("seconds", int(req["n_updates"]))):
            _sync(device)
            start = time.perf_counter()
            train_matrix_game(dict(cfg, n_updates=n))
            _sync(device)
            out[key] = time.perf_counter() - start
        return out


COMMANDS = ("info", "setup", "update", "matrix")


def use_checkout_allocator(wanted: bool) -> str:
    """Apply the checkout's own allocator policy, as its scripts do (``reuse_freed_memory``
    of ``resq_torchrl.cli``; a revision without it runs with the system default); returns
    what was used."""
    if not wanted:
        return "system default (reuse_freed_memory=false)"
    import importlib.util

    import resq_torchrl

    # only the checkout's own module: an editable install's import hook would otherwise
    # serve a module this revision lacks from the installed working tree
    own = Path(resq_torchrl.__file__).resolve().parent / "cli.py"
    policy = None
    if own.is_file():
        spec = importlib.util.spec_from_file_location("resq_torchrl.cli", own)
        cli = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cli)
        policy = getattr(cli, "reuse_freed_memory", None)
    if policy is None:
        return "system default (this revision has no reuse_freed_memory)"
    return "freed memory kept for reuse" if policy() else "system default (needs glibc)"


def main() -> None:
    # answers go to the original stdout; anything the library prints goes to stderr
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    threads = int(os.environ.get("BENCH_THREADS", os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_threads(threads)
    worker = Worker()
    worker.allocator = use_checkout_allocator(os.environ.get("BENCH_REUSE_FREED_MEMORY") == "1")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req.get("cmd")
        if cmd == "quit":
            answers.write(json.dumps({"ok": True}) + "\n")
            break
        try:
            if cmd not in COMMANDS:
                raise ValueError(f"unknown request {cmd!r}; one of {COMMANDS}")
            result = getattr(worker, cmd)(req)
            answer = {"ok": True, **result}
        except Exception as err:  # reported to the parent, which raises it
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            answer["traceback"] = traceback.format_exc()
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
