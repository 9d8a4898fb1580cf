"""The training run behind ``scripts/train.py``: collect, store episodes, learn, evaluate, log,
checkpoint. A reader can follow one run from top to bottom in :func:`train`.

Data flow (every arrow a torchrl/tensordict object)::

    env (batched) -> policy: agents -> masked greedy (QValueModule) -> EGreedyModule
      -> Collector + EpisodeAssembler -> EpisodeReplayBuffer -> loss (agents unrolled over T,
      mixers, double-Q TD(lambda)) -> optimizer -> HardUpdate every N episodes
      -> torchrl logger, greedy evaluation, atomic checkpoint
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from tensordict.nn import TensorDictSequential
from torchrl.envs import EnvBase, ExplorationType, set_exploration_type
from torchrl.modules import EGreedyModule, QValueModule
from torchrl.objectives import ValueEstimators
from tqdm.auto import tqdm

from resq_torchrl.analysis.ro import CaptureMonitor
from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.errors import (
    CheckpointNotFoundError,
    ConfigError,
    TrainingDivergedError,
    at_least,
    check_writable,
)
from resq_torchrl.modules.rnn import LastActionWriter
from resq_torchrl.training import checkpoint
from resq_torchrl.training.assembler import EpisodeAssembler
from resq_torchrl.training.builders import (
    check_device,
    check_network_sizes,
    env_dims,
    gradient_step,
    make_env,
    make_loss,
    make_optimizer,
    make_target_updater,
)
from resq_torchrl.training.checkpoint import (
    CHECKPOINT,
    EVALUATION_JSON,
    KEPT,
    REPLAY,
    Progress,
    RunState,
)
from resq_torchrl.training.collectors import check_collector, make_collector
from resq_torchrl.training.loggers import (
    MLFLOW_DB,
    check_logger,
    close_logger,
    make_logger,
    read_eval_rows,
    resume_logger,
)


def make_policies(
    loss, env: EnvBase, exploration: Mapping
) -> tuple[TensorDictSequential, EGreedyModule]:
    """Collection policy (masked greedy over the loss's main agents + annealed epsilon-greedy
    that never picks an unavailable action) and its ``EGreedyModule``. The greedy evaluation
    policy is the same object under ``ExplorationType.DETERMINISTIC``."""
    agents = loss.agent_network  # shares its parameters with the loss (functional params)
    n_actions = env.full_action_spec["agents", "action"].space.n
    mask_key = ("agents", "action_mask")
    # distributional (IQN) agents act on the mean of their quantiles, written at mean_key
    value_key = getattr(agents, "mean_key", ("agents", "action_value"))
    greedy = QValueModule(
        action_space="categorical",
        action_value_key=value_key,
        action_mask_key=mask_key,
        out_keys=[("agents", "action"), value_key, ("agents", "chosen_action_value")],
    )
    egreedy = EGreedyModule(
        env.full_action_spec,
        eps_init=float(exploration["eps_init"]),
        eps_end=float(exploration["eps_end"]),
        annealing_num_steps=int(exploration["anneal_frames"]),
        action_key=("agents", "action"),
        action_mask_key=mask_key,
        device=env.device,  # eps must live with the policy or the collector copies it
    )
    modules = [agents, greedy, egreedy]
    if ("agents", "last_action") in agents.in_keys:
        # the recurrent agents read their previous action: write it where step_mdp finds it
        modules.append(LastActionWriter(n_actions))
    return TensorDictSequential(*modules), egreedy


def add_agent_transforms(env: EnvBase, loss) -> EnvBase:
    """Append what the loss's main agents need from the env: the primer of a recurrent
    agent's state and last action (nothing for feed-forward agents)."""
    primer = getattr(loss.agent_network, "make_tensordict_primer", None)
    if primer is not None:
        env.append_transform(primer())
    return env


@torch.no_grad()
def greedy_episodes(
    env: EnvBase, policy, max_steps: int, win_key: str | None = None
) -> dict[str, torch.Tensor]:
    """Play the first episode of every env of the batched ``env`` (``B`` envs) with
    ``policy`` under ``ExplorationType.DETERMINISTIC``, for at most ``max_steps`` steps.

    Returns (all on CPU) ``returns`` ``[B]`` float (the sum of the team reward over the
    episode's steps), ``lengths`` ``[B]`` int, ``completed`` ``[B]`` bool (the episode ended
    within ``max_steps``), when ``win_key`` is given and the env writes it, ``won``
    ``[B]`` bool (the episode's last step had ``win_key`` set), and for an env that records
    events in an ``event_log`` (predator-prey: ``captures``, ``lone_catches``) their counts
    over the episode, ``[B]`` int, under the events' names."""
    # an env that records events (predator-prey's ``event_log``) records them only here
    base = getattr(env, "base_env", env)
    log = [] if hasattr(base, "event_log") else None
    if log is not None:
        base.event_log = log
    try:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            rollout = env.rollout(max_steps, policy, break_when_any_done=False)
    finally:
        if log is not None:
            base.event_log = None
    done = rollout.get(("next", "done")).squeeze(-1)  # [B, T]
    first = (done.cumsum(-1) - done.long()) == 0  # steps of each env's first episode
    reward = rollout.get(("next", "reward")).squeeze(-1)
    out = {
        "returns": (reward * first).sum(-1).float().cpu(),
        "lengths": first.sum(-1).cpu(),
        "completed": done.any(-1).cpu(),
    }
    if log and len(log) == rollout.shape[-1]:  # per-step counts [B]: the first episode's total
        for name in log[0]:
            out[name] = (torch.stack([step[name] for step in log], -1) * first).sum(-1).cpu()
    if win_key is not None and ("next", win_key) in rollout.keys(True):
        won = rollout.get(("next", win_key)).squeeze(-1).bool() & first & done
        out["won"] = won.any(-1).cpu()
    return out


def evaluate(env: EnvBase, policy, max_steps: int, win_key: str | None = None) -> dict:
    """Greedy returns of one episode per env of the batched ``env`` (and, for an env that
    records events, their means per episode: ``eval/captures``, ``eval/lone_catches``)."""
    played = greedy_episodes(env, policy, max_steps, win_key)
    out = {
        "eval/return": float(played.pop("returns").mean()),
        "eval/episodes": int(played.pop("completed").sum()),
    }
    played.pop("lengths")
    if "won" in played:
        out["eval/win_rate"] = float(played.pop("won").float().mean())
    for name, counts in played.items():  # the env's events
        out[f"eval/{name}"] = float(counts.float().mean())
    return out


def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators ``fork_rng`` must restore (none on CPU)."""
    return list(range(torch.cuda.device_count())) if device.type == "cuda" else []


def _drop_evaluations_after(path: Path, frames: int) -> None:
    """Keep the evaluations made up to the checkpoint a run resumes from: those after it
    are redone by the resumed run (atomic rewrite)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [row for row in read_eval_rows(path) if row["frames"] <= frames]
    if len(kept) < len(lines):  # evaluations past the checkpoint, or a line cut short
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        os.replace(tmp, path)


def _eval_at(path: Path, frames: int) -> dict | None:
    """The evaluation of ``eval.jsonl`` made at ``frames`` exactly, if any."""
    at = [row for row in read_eval_rows(path) if row.get("frames") == frames]
    return at[-1] if at else None


def _final_at(path: Path) -> int:
    """The frames of the final evaluation in ``path`` (``final.json``), -1 without one."""
    try:
        return int(json.loads(path.read_text())["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _finished(cfg: Mapping, out_dir: Path, saved_at: int) -> dict | None:
    """A resumed run whose checkpoint (at ``saved_at`` frames) spent ``total_frames`` and
    whose ``final.json`` is at least as recent: with ``resume=auto`` (a sweep launched
    again) its final evaluation, else a :class:`ConfigError`; ``None`` when there is
    something to do. Decided before anything is built: a sweep of finished runs loads no
    replay and starts no worker."""
    total_frames = int(cfg["total_frames"])
    done = out_dir / "final.json"
    if saved_at < total_frames or _final_at(done) < saved_at:
        return None
    if str(cfg.get("resume")) == "auto":
        print(f"resume=auto: {out_dir} is done ({saved_at} frames): nothing to do")
        return json.loads(done.read_text())
    raise ConfigError(f"nothing to do: {saved_at} frames done >= total_frames={total_frames}")


def check_settings(cfg: Mapping) -> None:
    """Raise a :class:`ConfigError` naming the key for a setting out of its range, before
    anything is built: each would otherwise fail deep inside (``n_envs=0``: an IndexError;
    ``eval_interval=0``: a division by zero) or train nothing without a word (``lr=0``)."""
    for key in ("exploration", "agent", "algorithm", "env"):
        if key in cfg and not isinstance(cfg[key], Mapping):
            raise ConfigError(
                f"{key} is a group of settings, got {key}={cfg[key]!r}: set one of them "
                f"({key}.<name>=...)"
            )
    check_collector(cfg)
    # the envs' seeding (numpy's, VMAS's, ...) takes no negative seed
    at_least("seed", cfg.get("seed"), 0)
    # the env's own message named the key its config ties to it (episode_limit, max_cycles)
    at_least("env.max_steps", (cfg.get("env") or {}).get("max_steps"), 1)
    for key in ("n_envs", "rollout_steps", "episodes_per_batch", "batch_episodes"):
        at_least(key, cfg.get(key), 1)
    for key in ("eval_interval", "eval_episodes", "checkpoint_interval"):
        at_least(key, cfg.get(key), 1)
    at_least("keep_checkpoints", cfg.get("keep_checkpoints"), 0)
    at_least("target_update_episodes", cfg.get("target_update_episodes"), 0, strict=True)
    at_least("updates_per_episode", cfg.get("updates_per_episode"), 0)
    for key in ("lr", "optim_eps", "grad_clip"):
        at_least(key, cfg.get(key), 0, strict=True)
    at_least("priority_alpha", cfg.get("priority_alpha"), 0)
    beta = cfg.get("priority_beta")
    if beta is not None and not 0.0 <= float(beta) <= 1.0:
        raise ConfigError(f"priority_beta must lie in [0, 1], got {beta}")
    eps = cfg.get("exploration") or {}
    start, end = float(eps.get("eps_init", 1.0)), float(eps.get("eps_end", 0.0))
    if not 0.0 <= end <= start <= 1.0:
        raise ConfigError(
            f"exploration needs 0 <= eps_end <= eps_init <= 1, got eps_init={start:g}, "
            f"eps_end={end:g}"
        )
    at_least("exploration.anneal_frames", eps.get("anneal_frames"), 1)
    check_network_sizes(cfg.get("algorithm") or {}, cfg.get("agent") or {})
    buffer = cfg.get("checkpoint_buffer", "auto")
    if not isinstance(buffer, bool) and str(buffer) != "auto":
        raise ConfigError(f"checkpoint_buffer must be true, false or auto, got {buffer!r}")


def check_budget(cfg: Mapping) -> None:
    """Raise a :class:`ConfigError` for a budget that cannot buy one batch of the collector
    (``episodes_per_batch`` episodes of up to ``max_steps`` steps) or a replay that can never
    hold one training batch."""
    per_batch = int(cfg["episodes_per_batch"]) * int(cfg["env"]["max_steps"])
    if int(cfg["total_frames"]) < per_batch:
        raise ConfigError(
            f"total_frames={cfg['total_frames']} is less than one batch: "
            f"episodes_per_batch={cfg['episodes_per_batch']} episodes of up to "
            f"max_steps={cfg['env']['max_steps']} steps ({per_batch} frames); raise "
            "total_frames or lower episodes_per_batch"
        )
    if int(cfg["buffer_episodes"]) < int(cfg["batch_episodes"]):
        raise ConfigError(
            f"buffer_episodes={cfg['buffer_episodes']} can never hold one training batch of "
            f"batch_episodes={cfg['batch_episodes']}: no update would ever be done"
        )


def warn_if_no_update(cfg: Mapping, frames: int = 0, stored: int = 0, credit: float = 0.0) -> None:
    """Say at start when the run will end before its first update, were every episode to
    last ``max_steps`` (the fewest batches the budget can buy): updates start once the
    replay holds ``batch_episodes`` episodes, then ``updates_per_episode`` per episode.
    ``frames``, ``stored``, ``credit``: frames done, episodes in the replay and update credit
    of a resumed run."""
    per_batch, max_steps = int(cfg["episodes_per_batch"]), int(cfg["env"]["max_steps"])
    batch_episodes, rate = int(cfg["batch_episodes"]), float(cfg["updates_per_episode"])
    frames_left = int(cfg["total_frames"]) - frames
    batches = math.ceil(frames_left / (per_batch * max_steps))
    fill = max(1, math.ceil((batch_episodes - stored) / per_batch))  # first batch with updates
    if fill <= batches and credit + (batches - fill + 1) * per_batch * rate >= 1.0:
        return
    need = fill - 1 + (math.ceil((1.0 - credit) / (per_batch * rate)) if rate > 0 else 0)
    hint = (
        f"total_frames >= {frames + need * per_batch * max_steps} guarantees one"
        if rate > 0
        else "updates_per_episode=0"
    )
    print(
        f"warning: this run ends with no update if its episodes run to max_steps={max_steps}: "
        f"{frames_left} frames are {batches} batch(es) of episodes_per_batch={per_batch}, and "
        f"updates start once the replay holds batch_episodes={batch_episodes} "
        f"(it holds {stored}); {hint}",
        flush=True,
    )


def resume_path(cfg: Mapping, out_dir: Path) -> Path | None:
    """The checkpoint a run continues from: ``resume=true``: ``out_dir/checkpoint.pt`` (a
    :class:`CheckpointNotFoundError` when there is none); ``resume=auto``: that one if it
    exists, else ``None`` (a new run); ``resume=PATH``: that file; ``false``: ``None``."""
    resume = cfg.get("resume", False)
    latest = out_dir / CHECKPOINT
    if resume is None or resume is False or str(resume).lower() == "false":
        return None
    if resume is True or str(resume).lower() == "true":
        if not latest.exists():
            raise CheckpointNotFoundError(
                f"resume=true but there is no checkpoint at {latest}: drop resume=true to "
                "start a new run, use resume=auto to start one when there is none, or set "
                "output_dir= to the directory of the run to continue"
            )
        return latest
    if str(resume) == "auto":
        if latest.exists():
            return latest
        print(f"resume=auto: no checkpoint at {latest}, starting a new run", flush=True)
        return None
    path = Path(str(resume))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"resume={resume}: no checkpoint file there; give true, auto or the path of a "
            "checkpoint.pt (or checkpoints/frames_<N>.pt)"
        )
    return path


#: the files of a run in its output_dir: a new run there would replace or append to them
RUN_FILES = (CHECKPOINT, "final.json", "eval.jsonl")
#: what else a run (and ``scripts/evaluate.py``, ``benchmarks/learning_runs.sh``) writes
#: there, besides its loggers' directories (:func:`earlier_run_outputs`)
RUN_OUTPUTS = (
    *RUN_FILES,
    EVALUATION_JSON,
    "render",  # evaluate.py render=true's default render_dir
    MLFLOW_DB,
    REPLAY,
    f"{REPLAY}.old",
    f"{REPLAY}.prev",
    f"{REPLAY}.tar.zst",  # a finished run's replay, packed by the experiment queues
    KEPT,
    "wandb",
    "mlartifacts",
)


def earlier_run_outputs(out_dir: Path, experiment_name: str | None = None) -> list[str]:
    """The names in ``out_dir`` that an earlier run wrote: :data:`RUN_OUTPUTS`, and each
    logger directory, whatever the earlier run's name was: one holding the csv logger's
    ``texts/hparams0.txt`` (torchrl's file of the logged settings), or this run's
    ``experiment_name`` (a tensorboard run's event files). A new run appended its csv
    lines to the earlier run's, and plots mixed both. Other folders (a user's own, with a
    ``texts/`` of theirs) are not a run's."""
    if not out_dir.is_dir():
        return []
    found = [name for name in RUN_OUTPUTS if (out_dir / name).exists()]
    for sub in sorted(out_dir.iterdir()):
        if sub.name in found or not sub.is_dir():
            continue
        if (sub / "texts" / "hparams0.txt").is_file() or sub.name == experiment_name:
            found.append(sub.name)
    return found


def check_fresh_output_dir(
    out_dir: Path,
    overwrite: bool,
    auto: bool = False,
    resuming_from: Path | None = None,
    experiment_name: str | None = None,
) -> list[str]:
    """Before a new run (nothing to resume), or one resumed from another directory's
    checkpoint (``resuming_from``), writes into ``out_dir``: raise a :class:`ConfigError`
    when another run's outputs are there (:func:`earlier_run_outputs`), whose checkpoint,
    results and logs the
    run would replace and whose evaluations it would append to or cut. ``overwrite=true``
    (or ``resume=auto``, which found no checkpoint: what is there is an attempt that never
    reached one) lets the run start clean: returns the files :func:`clear_earlier_run` is
    to remove, once the run's envs and networks are built (a setting they refuse must not
    cost the earlier run)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output_dir={out_dir} is a file, not a directory: choose another")
    found = earlier_run_outputs(out_dir, experiment_name)
    if not found:
        return []
    kept = sorted((out_dir / KEPT).rglob("*.pt")) if (out_dir / KEPT).is_dir() else []
    if auto and not overwrite and kept:
        # no checkpoint.pt, yet the run did reach checkpoints: not an attempt to clear
        raise ConfigError(
            f"resume=auto: output_dir={out_dir} has no checkpoint.pt but keeps {len(kept)} "
            f"checkpoint(s) in {out_dir / KEPT}: continue one with resume=<its path>, or start "
            "over with overwrite=true"
        )
    if resuming_from is not None and not overwrite:
        raise ConfigError(
            f"output_dir={out_dir} already holds another run ({', '.join(found)}), and "
            f"resume={resuming_from} would write over it: choose an output_dir without a run, "
            "or overwrite=true to replace it"
        )
    if not (overwrite or auto) and CHECKPOINT not in found:  # resume=true would not find one
        raise ConfigError(
            f"output_dir={out_dir} holds an earlier attempt that reached no checkpoint "
            f"({', '.join(found)}): start over there with resume=auto or overwrite=true, or "
            "choose another output_dir"
        )
    if not (overwrite or auto):
        raise ConfigError(
            f"output_dir={out_dir} already holds a run ({', '.join(found)}): continue it with "
            "resume=true (or resume=auto), start over there with overwrite=true, or choose "
            "another output_dir"
        )
    return found


def clear_earlier_run(out_dir: Path, found: list[str], overwrite: bool) -> None:
    """Remove the files :func:`check_fresh_output_dir` found (``overwrite=true``, or
    ``resume=auto`` without a checkpoint), and say so."""
    if not found:
        return
    for name in found:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    why = "overwrite=true" if overwrite else "resume=auto without a checkpoint"
    print(f"{why}: removed the earlier {', '.join(found)} of {out_dir}", flush=True)


class _NonFinite(Exception):
    """Raised by :class:`NonFiniteGuard` inside an update; carries what was not finite."""


class NonFiniteGuard:
    """While entered (``with guard:``), stops an update before it changes anything: a
    forward hook on the loss raises when one of its ``loss_*`` terms is not finite (before
    backward), a step pre-hook on the optimizer when a gradient is not finite (before the
    step). One device-to-host read per check, so two per update."""

    def __init__(self, loss: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.active = False
        loss.register_forward_hook(self._check_loss)
        optimizer.register_step_pre_hook(self._check_gradients)

    def __enter__(self) -> NonFiniteGuard:
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def _check_loss(self, module, args, losses) -> None:
        if not self.active:
            return
        terms = {k: v.detach() for k, v in losses.items() if k.startswith("loss_")}
        if bool(torch.stack([v.sum() for v in terms.values()]).isfinite().all()):
            return
        values = ", ".join(f"{k}={float(v.sum())}" for k, v in terms.items())
        bad = [k for k, v in terms.items() if not bool(v.isfinite().all())]
        raise _NonFinite(f"{' and '.join(bad)} not finite ({values})")

    def _check_gradients(self, optimizer, args, kwargs) -> None:
        if not self.active:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads and not bool(torch.stack([g.abs().amax() for g in grads]).isfinite().all()):
            raise _NonFinite("the gradient is not finite (every loss term was)")


def provenance() -> dict:
    """What produced a run, for its log and ``final.json``: the commit of this package's
    checkout (``+changes`` when it has uncommitted ones; ``None`` outside a git checkout), the
    CPU's model name, torch's version and its thread count. Runs are deterministic per seed
    on one machine and thread count, but a different CPU takes other kernel paths, and torch
    splits its reductions over its threads, so the same seed and commit can follow another
    trajectory on another CPU or thread count (``docs/results.md``, ``docs/speed.md``)."""
    import platform
    import subprocess

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD") if (root / ".git").exists() else None
    if commit is not None and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "commit": commit,
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def train(cfg: Mapping) -> dict:
    """Train ``cfg["algorithm"]`` on ``cfg["env"]``; returns the final evaluation.

    ``resume`` (``true``, ``auto`` or a path, see :func:`resume_path`) continues a run from
    a checkpoint (:mod:`~resq_torchrl.training.checkpoint`: what a run's future depends on).
    ``kill_after_checkpoint=k`` (tests only) SIGKILLs the process right after its k-th
    periodic checkpoint."""
    out_dir = Path(cfg["output_dir"])
    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    device = check_device(cfg["device"])
    env_cfg, algo, agent_cfg = cfg["env"], cfg["algorithm"], cfg["agent"]
    max_len = int(env_cfg["max_steps"])
    check_settings(cfg)
    check_budget(cfg)
    check_logger(cfg["logger"])
    start_from = resume_path(cfg, out_dir)
    resumed_frames = 0  # the frames of the checkpoint resumed (0: a new run)
    if start_from is not None:  # before anything is built or written
        resumed_frames = checkpoint.check_resumable(start_from, cfg)
        if checkpoint.is_run_checkpoint(start_from, out_dir):
            done = _finished(cfg, out_dir, resumed_frames)
            if done is not None:
                return done
    overwrite = bool(cfg.get("overwrite", False))
    earlier: list[str] = []  # an earlier run's files to remove (overwrite=true)
    if start_from is None:
        auto = str(cfg.get("resume", False)) == "auto"
        earlier = check_fresh_output_dir(
            out_dir, overwrite, auto, experiment_name=str(cfg.get("experiment_name"))
        )
    elif not checkpoint.is_run_checkpoint(start_from, out_dir):
        # resume=PATH from another run's directory writes its checkpoints and evaluations
        # here: never over a third run's (its checkpoint would be replaced, its log cut)
        earlier = check_fresh_output_dir(
            out_dir,
            overwrite,
            resuming_from=start_from,
            experiment_name=str(cfg.get("experiment_name")),
        )
    check_writable("output_dir", out_dir, kind="dir")
    code = provenance()
    print(
        f"code: {code['commit']}, cpu: {code['cpu']}, torch {code['torch']}, "
        f"{code['threads']} thread{'s' if code['threads'] > 1 else ''}",
        flush=True,
    )

    # some simulators seed torch's global generator in set_seed (VMAS): keep the run's own
    # stream (networks, exploration, replay sampling) seeded by cfg.seed alone
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        env = make_env(env_cfg, int(cfg["n_envs"]), device, seed=seed)
    dims = env_dims(env)
    loss = make_loss(algo, agent_cfg, dims, device)
    if float(algo.get("td_lambda", 0.0)) > 0:
        loss.make_value_estimator(
            ValueEstimators.TDLambda, gamma=float(algo["gamma"]), lmbda=float(algo["td_lambda"])
        )
    add_agent_transforms(env, loss)
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        eval_env = make_env(env_cfg, int(cfg["eval_episodes"]), device, seed=seed + 1)
    add_agent_transforms(eval_env, loss)
    # after the envs' first imports, which draw from these generators (jax, jaxmarl)
    np.random.seed(seed)
    random.seed(seed)

    policy, egreedy = make_policies(loss, env, cfg["exploration"])
    optimizer = make_optimizer(loss, cfg["optimizer"], float(cfg["lr"]), float(cfg["optim_eps"]))
    target_updater = make_target_updater(loss, interval=1)  # copies on each call: we pace it
    buffer = EpisodeReplayBuffer(
        capacity=int(cfg["buffer_episodes"]),
        max_len=max_len,
        batch_size=int(cfg["batch_episodes"]),
        device=device,
        prioritized=bool(cfg.get("prioritized_replay", False)),
        alpha=float(cfg.get("priority_alpha", 0.6)),
        beta=float(cfg.get("priority_beta", 0.4)),
    )
    # predator-prey: count the collected capture steps, catch gap at the buffer's captures
    capture = CaptureMonitor.from_env_cfg(env_cfg, seed=seed)
    # made (or cleared) once the envs and networks are built: a setting they refuse
    # (env.grid_size=1, a simulator not installed) leaves no empty output directory behind
    # and costs no earlier run its files
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_earlier_run(out_dir, earlier, overwrite)
    logger = make_logger(cfg, out_dir)
    # workers of a resumed run are seeded anew (their envs cannot be restored): see worker_seed
    single = str(cfg.get("collector", {}).get("type", "single")) == "single"
    resumed_at = 0 if single else resumed_frames
    collector = make_collector(cfg, env, policy, device, resumed_at)
    run = RunState(loss, optimizer, egreedy, buffer, env, eval_env, collector, capture, Progress())
    p = run.progress  # frames, episodes, updates, last_target, credit

    if start_from is not None:
        try:
            checkpoint.restore(start_from, run, cfg, device)
        except BaseException:  # worker processes and a local Ray never outlive an error
            collector.shutdown()
            close_logger(logger, failed=True)
            raise
        if not isinstance(collector, EpisodeAssembler):  # workers got the weights as built
            collector.update_policy_weights_()
        _drop_evaluations_after(out_dir / "eval.jsonl", p.frames)
        resume_logger(logger, p.frames)  # what was logged past the checkpoint is redone
        print(
            f"resumed from {start_from} at {p.frames} frames ({p.episodes} episodes, "
            f"{len(buffer)} in the replay buffer)",
            flush=True,
        )
    total_frames = int(cfg["total_frames"])
    finishing = p.frames >= total_frames  # the budget is spent: at most the final evaluation
    if finishing:  # stopped after its last checkpoint, before final.json was written
        print(
            f"the checkpoint is at the end of the run ({p.frames} frames) but "
            f"{out_dir / 'final.json'} is missing: only the final evaluation is made",
            flush=True,
        )
    else:
        warn_if_no_update(cfg, p.frames, len(buffer), p.credit)
    grad_clip = float(cfg["grad_clip"])
    target_every = int(cfg["target_update_episodes"])
    updates_per_episode = float(cfg["updates_per_episode"])
    eval_every, ckpt_every = int(cfg["eval_interval"]), int(cfg["checkpoint_interval"])
    next_eval = (p.frames // eval_every + 1) * eval_every
    next_ckpt = (p.frames // ckpt_every + 1) * ckpt_every
    keep = int(cfg.get("keep_checkpoints", 0))
    kill_after, checkpoints_written = int(cfg.get("kill_after_checkpoint", 0)), 0
    history_path = out_dir / "eval.jsonl"
    guard = NonFiniteGuard(loss, optimizer)

    def run_eval() -> dict:
        result = evaluate(eval_env, policy, max_len, env_cfg.get("win_key"))
        if capture is not None:
            result.update(capture.evaluate(loss, buffer))
        result.update({"frames": p.frames, "episodes": p.episodes, "updates": p.updates})
        for k, v in result.items():
            if k.startswith("eval/"):
                logger.log_scalar(k, v, step=p.frames)
        with history_path.open("a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    latest: dict | None = _eval_at(history_path, p.frames) if finishing else None
    saved_at = p.frames if finishing else None  # the frames of the last checkpoint written
    start, started_at, seconds_before = time.time(), p.frames, p.seconds

    def clock() -> None:  # the run's training time so far
        p.seconds = seconds_before + time.time() - start

    def save(keep: int = 0) -> Path:  # every checkpoint carries the training time so far
        clock()
        return checkpoint.save(out_dir, run, cfg, keep)

    bar = tqdm(total=total_frames, initial=p.frames, unit="frames", disable=not cfg["progress"])
    try:
        for batch in () if finishing else collector:
            n_frames = int(batch.get(("collector", "mask")).sum())
            p.frames += n_frames
            egreedy.step(n_frames)
            p.episodes += buffer.extend(batch)
            done = batch.get(("next", "done")).squeeze(-1) & batch.get(("collector", "mask"))
            returns = batch.get(("next", "episode_reward"))[done]
            metrics = {"train/return": float(returns.mean()), "train/epsilon": float(egreedy.eps)}
            if capture is not None:
                metrics["train/capture_steps"] = capture.update(batch)
            # no credit piles up before the buffer can fill a batch (no burst of updates later)
            p.credit = (
                p.credit + batch.shape[0] * updates_per_episode
                if len(buffer) >= buffer.batch_size
                else 0.0
            )
            last, real = None, None
            while p.credit >= 1.0:
                p.credit -= 1.0
                sample = buffer.sample().to(device)
                real = sample.get(("collector", "mask"))  # its real steps: real_step_share
                try:
                    with guard:
                        last = gradient_step(loss, optimizer, sample, grad_clip, buffer)
                except _NonFinite as bad:
                    p.credit += 1.0  # the last good state: this update not done
                    path = save()  # the collector: see except
                    close_logger(logger, failed=True)
                    raise TrainingDivergedError(
                        f"update {p.updates + 1}: {bad}, on a replay batch sampled after "
                        f"collecting frames {p.frames - n_frames}-{p.frames}; the run stopped "
                        f"before applying it, {path} holds the state before it ({p.updates} "
                        "updates): lower lr or grad_clip, or resume from an earlier checkpoint"
                    ) from None
                p.updates += 1
            clock()  # the run's training time so far, across resumes: its pace from the logs
            if math.isfinite(p.seconds):  # (not when resumed from a checkpoint without it)
                metrics["train/seconds"] = p.seconds
            if last is not None:  # read back once per batch, not once per update
                metrics["train/grad_norm"] = last[1].item()
                metrics["train/real_step_share"] = real.float().mean().item()
                metrics.update({f"train/{k}": v.item() for k, v in last[0].items()})
            if p.episodes - p.last_target >= target_every:
                target_updater.step()
                p.last_target = p.episodes
            for k, v in metrics.items():
                logger.log_scalar(k, v, step=p.frames)
            if p.frames >= next_eval:
                latest = run_eval()
                next_eval += eval_every
            if p.frames >= next_ckpt:
                save(keep)
                saved_at = p.frames
                next_ckpt += ckpt_every
                checkpoints_written += 1
                if checkpoints_written == kill_after:  # fault injection for the resume tests
                    os.kill(os.getpid(), signal.SIGKILL)
            bar.update(n_frames)
            bar.set_postfix(
                ret=f"{metrics['train/return']:.2f}",
                eps=f"{metrics['train/epsilon']:.3f}",
                refresh=False,
            )
            if p.frames >= total_frames:  # the budget, exceeded by less than this batch
                break
    except BaseException:  # worker processes and a local Ray never outlive an error
        collector.shutdown()
        raise
    bar.close()
    if saved_at != p.frames:  # not twice at the same frames (a replay dump can be GBs)
        save(keep)
    threads = torch.get_num_threads()
    collector.shutdown()
    # torchrl's multi-process collectors set the thread count on shutdown: the final
    # evaluation runs on the run's own, the one its provenance names
    torch.set_num_threads(threads)
    # the last periodic evaluation may have been made at these very frames: not twice
    final = dict(latest) if latest and latest["frames"] == p.frames else run_eval()
    close_logger(logger)
    # this process's seconds and where it took the run from (a resumed run's "seconds" cover
    # only its last part), and the whole run's, when every part of it was timed
    final["seconds"] = time.time() - start
    final["resumed_from_frames"] = started_at
    clock()
    final["seconds_total"] = p.seconds if math.isfinite(p.seconds) else None
    final["trained"] = p.updates > 0
    final["code"] = code
    if not final["trained"]:
        final["note"] = (
            "no update was made: this evaluates the networks as initialised, not a trained "
            f"policy (updates start once the replay holds batch_episodes={buffer.batch_size})"
        )
        print(f"warning: {final['note']}", flush=True)
    (out_dir / "final.json").write_text(json.dumps(final, indent=2))
    if not math.isfinite(final["eval/return"]):
        raise FloatingPointError(f"final evaluation return is not finite: {final}")
    return final


def evaluate_checkpoint(
    out_dir: str | Path, episodes: int = 32, device: str | None = None, seed: int = 0
) -> dict:
    """Greedy evaluation of ``episodes`` episodes (one per env of a batched env) with the
    networks of ``out_dir/checkpoint.pt``, built from the config stored in it (read by
    :func:`~resq_torchrl.training.checkpoint.load_checkpoint`: plain data only)."""
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        raise CheckpointNotFoundError(
            f"no checkpoint at {path}: train with output_dir={out_dir} first"
        )
    state = checkpoint.load_checkpoint(path, map_location="cpu")
    cfg = state["config"]
    device = check_device(device or cfg["device"])
    env = make_env(cfg["env"], episodes, device, seed=seed)
    loss = make_loss(cfg["algorithm"], cfg["agent"], env_dims(env), device)
    loss.load_state_dict(state["loss"])
    add_agent_transforms(env, loss)
    policy, _ = make_policies(loss, env, cfg["exploration"])
    result = evaluate(env, policy, int(cfg["env"]["max_steps"]), cfg["env"].get("win_key"))
    result.update({"checkpoint_frames": state["frames"], "seed": seed})
    return result


def last_eval(out_dir: str | Path) -> dict | None:
    """The last line of ``eval.jsonl`` in ``out_dir`` (``None`` if there is none)."""
    path = Path(out_dir) / "eval.jsonl"
    rows = read_eval_rows(path) if path.exists() else []
    return rows[-1] if rows else None


__all__ = [
    "CHECKPOINT",
    "REPLAY",
    "NonFiniteGuard",
    "resume_path",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "make_policies",
    "add_agent_transforms",
    "last_eval",
]
