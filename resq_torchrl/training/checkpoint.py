"""What a training run's future depends on, saved and restored in one place.

A checkpoint (``output_dir/checkpoint.pt``, written atomically) holds, as tensors, numbers,
strings and plain containers only (it loads with ``torch.load(weights_only=True)``):

- the loss's parameters and target parameters, the optimizer, the exploration module
  (``EGreedyModule``'s epsilon), the run's counters (:class:`Progress`);
- every random generator: torch's CPU (and CUDA, when in use) generators, numpy's and
  Python's global ones, each env's own (:func:`env_state`), SMAX's JAX key, the
  predator-prey capture monitor's;
- the state of the training and evaluation envs (each simulator's ``simulator_state``);
- the torchrl ``Collector``'s runtime: its carried TensorDict (the envs' current
  observations, recurrent states, last actions, episode returns) and its trajectory
  counter, and the episodes its :class:`EpisodeAssembler` holds (in flight and complete
  ones not yet handed out), so that nothing in flight is lost (a checkpoint written before
  the assembler holds torchrl's own trajectories instead: they are taken over);
- the config, as plain data.

The replay buffer is written beside it (``output_dir/replay/``, tagged with the checkpoint's
frame count) with ``checkpoint_buffer=true``, or with ``auto`` (the default) when its storage
at full capacity fits ``checkpoint_buffer_max_mb``; a run resumed without it refills it.
:func:`save` writes all of it, :func:`restore` puts it back into a freshly built run (after
its collector is built: building one resets the envs). On CPU with a fixed seed a restored
run continues exactly as the saved one would have, bit for bit, for the envs whose whole
state is restored (predator-prey, the matrix game, VMAS, SMAX). Not restored exactly:

- PettingZoo (mpe2) envs: the adapter's ``SerialEnv``/``ParallelEnv`` keeps each copy's
  simulator (and its numpy generator) inside the copy or in a worker process, not saved: a
  resumed run starts new episodes (from the restored torch generator, but mpe2 draws its
  own), and the episodes in flight at the checkpoint are dropped (their steps never reach
  the replay buffer); the networks, optimizer, replay and counters are restored;
- SMAC v1/v2 (StarCraft II processes): same as PettingZoo;
- SMAX: exact on the same JAX build and device (XLA may compile differently elsewhere);
- a multi-process collector (``collector.type`` other than ``single``): its workers' envs
  and partial episodes live in other processes: they restart with new episodes;
- checkpoints written before this format (:func:`load_checkpoint`'s legacy path): they hold
  no env, collector, numpy or Python generator state; resuming one continues the run but
  starts new episodes.

:func:`load_checkpoint` is the one way to read a checkpoint (``resume`` and
``scripts/evaluate.py``): anything but plain data is refused with a one-line
:class:`~resq_torchrl.errors.UnsafeCheckpointError`, without running it.
"""

from __future__ import annotations

import collections
import math
import os
import pickle
import random
import re
import shutil
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from torchrl.collectors import Collector
from torchrl.envs import EnvBase

from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.errors import CheckpointNotFoundError, ConfigError, UnsafeCheckpointError
from resq_torchrl.training.assembler import EpisodeAssembler

#: the latest checkpoint of a run, in its ``output_dir``
CHECKPOINT = "checkpoint.pt"
#: with ``keep_checkpoints=K``: the newest K as ``checkpoints/frames_<N>.pt``
KEPT = "checkpoints"
#: kept checkpoints past the one a run was resumed from (``checkpoints/superseded/``)
SUPERSEDED = "superseded"
#: with ``checkpoint_buffer=true``, the replay buffer's directory next to the checkpoint
REPLAY = "replay"
#: where ``scripts/evaluate.py`` (``evaluation.evaluate_run``) writes a run's greedy
#: evaluation, in its ``output_dir`` (named here with the run's other files)
EVALUATION_JSON = "evaluation.json"
#: the checkpoint format: 2 holds the envs' and the collector's state (legacy ones: none)
FORMAT = 2


@dataclass
class Progress:
    """The run's counters: env steps, episodes stored, gradient updates, episodes at the
    last target update, the fractional update credit carried to the next batch, and the
    wall-clock seconds the run has trained, over every process that continued it, up to
    the last checkpoint (``nan`` when it was resumed from a checkpoint written before this
    counter existed: unknown)."""

    frames: int = 0
    episodes: int = 0
    updates: int = 0
    last_target: int = 0
    credit: float = 0.0
    seconds: float = 0.0


@dataclass
class RunState:
    """Everything of a run that a checkpoint saves and restores."""

    loss: torch.nn.Module
    optimizer: torch.optim.Optimizer
    egreedy: torch.nn.Module
    buffer: EpisodeReplayBuffer
    env: EnvBase
    eval_env: EnvBase
    collector: object
    capture: object | None  # predator-prey's CaptureMonitor (state_dict/load_state_dict)
    progress: Progress
    #: whether checkpoints carry the replay buffer (``checkpoint_buffer=auto``: decided at
    #: the first checkpoint with a stored episode, see :func:`saves_buffer`)
    save_buffer: bool | None = None


def saves_buffer(cfg: Mapping, run: RunState) -> bool:
    """``checkpoint_buffer``: ``true``/``false``, or ``auto`` (the default): save the replay
    buffer when its storage, at full capacity, fits ``checkpoint_buffer_max_mb``. Said once,
    when decided."""
    setting = cfg.get("checkpoint_buffer", "auto")
    if str(setting).lower() != "auto":
        return bool(setting) and str(setting).lower() != "false"
    if run.save_buffer is None and len(run.buffer) > 0:
        mb = run.buffer.buffer.storage[0].bytes() * run.buffer.capacity / 2**20
        limit = float(cfg.get("checkpoint_buffer_max_mb", 1024))
        run.save_buffer = mb <= limit
        print(
            f"checkpoint_buffer=auto: the replay buffer ({mb:.0f} MB at capacity) "
            + (
                f"is saved with each checkpoint (<= checkpoint_buffer_max_mb={limit:g})"
                if run.save_buffer
                else f"is not saved (> checkpoint_buffer_max_mb={limit:g}): a resumed run "
                "refills it and is not exact; checkpoint_buffer=true saves it anyway"
            ),
            flush=True,
        )
    return bool(run.save_buffer)


# ------------------------------------------------------------------------------ save/restore


def save(out_dir: Path, run: RunState, cfg: Mapping, keep: int = 0) -> Path:
    """Write the checkpoint of ``run`` to ``out_dir/checkpoint.pt`` (and, with ``keep > 0``,
    to ``out_dir/checkpoints/frames_<N>.pt``, keeping the newest ``keep``), atomically; with
    ``cfg["checkpoint_buffer"]`` the replay buffer first (the checkpoint refers to it).
    Returns the checkpoint's path."""
    out_dir = Path(out_dir)
    frames = run.progress.frames
    if saves_buffer(cfg, run):
        # the copy the current checkpoint refers to is kept until the new checkpoint is in
        # place: a crash between the two writes resumes with the replay of the old one
        run.buffer.dumps(out_dir / REPLAY, tag=frames, keep_previous=True)
    env = env_state(run.env)
    state = {
        "format": FORMAT,
        **asdict(run.progress),  # frames, episodes, updates, last_target, credit, seconds
        "loss": run.loss.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "egreedy": run.egreedy.state_dict(),
        "rng": rng_state(),
        "env": env,
        "eval_env": env_state(run.eval_env),
        # the episodes in flight continue only where the simulator's state is saved too
        "collector": collector_state(run.collector) if "simulator" in env else None,
        "capture": None if run.capture is None else run.capture.state_dict(),
        "config": plain_config(cfg),
        "threads": torch.get_num_threads(),  # split reductions round by the thread count
    }
    path = out_dir / CHECKPOINT
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    if keep > 0:
        kept_dir = out_dir / KEPT
        kept_dir.mkdir(exist_ok=True)
        kept = kept_dir / f"frames_{frames}.pt"
        kept_tmp = kept.with_name(kept.name + ".tmp")
        shutil.copyfile(tmp, kept_tmp)
        os.replace(kept_tmp, kept)
        by_frames = sorted(kept_dir.glob("frames_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
        # a run resumed from an earlier checkpoint: the ones past it belong to a future that
        # did not happen; moved aside (never deleted, never counted), not pruned in its place
        superseded = [p for p in by_frames if int(p.stem.split("_")[1]) > frames]
        if superseded:
            (kept_dir / SUPERSEDED).mkdir(exist_ok=True)
            for old in superseded:
                os.replace(old, kept_dir / SUPERSEDED / old.name)
        for old in [p for p in by_frames if p not in superseded][:-keep]:
            old.unlink()
    os.replace(tmp, path)  # a crash mid-write leaves the previous checkpoint intact
    EpisodeReplayBuffer.drop_previous(out_dir / REPLAY)
    return path


def _replay_of(path: Path, frames: int) -> tuple[Path, Path | None]:
    """The replay directory beside the checkpoint ``path`` (for a kept checkpoint
    ``checkpoints/frames_<N>.pt``, the run's own ``replay/``) and the copy in it written at
    ``frames`` (``None`` if there is none)."""
    for directory in (path.parent, path.parent.parent):
        replay = directory / REPLAY
        found = EpisodeReplayBuffer.stored_at(replay, tag=frames)
        if found is not None:
            return replay, found
    return path.parent / REPLAY, None


def is_run_checkpoint(path: Path, out_dir: Path) -> bool:
    """Whether ``path`` is one of the checkpoints of the run in ``out_dir``: its
    ``checkpoint.pt``, a kept ``checkpoints/frames_<N>.pt`` or one set aside in
    ``checkpoints/superseded/``."""
    run = Path(out_dir).resolve()
    return Path(path).resolve().parent in (run, run / KEPT, run / KEPT / SUPERSEDED)


def _model_of(cfg: Mapping) -> str:
    """``algorithm=<name> env=<name> agent=<settings>`` of a run config, for messages."""
    algo, env = cfg.get("algorithm") or {}, cfg.get("env") or {}
    agent = ",".join(f"{k}={v}" for k, v in (cfg.get("agent") or {}).items())
    return f"algorithm={algo.get('name', '?')} env={env.get('name', '?')} agent=({agent})"


def _check_same_env(path: Path, saved: Mapping | None, asked: Mapping) -> None:
    """Raise a :class:`ConfigError` naming the settings when a run resumes on another env
    than its checkpoint's (another grid, episode length, task): its networks, replay and
    episodes in flight belong to that env (it failed deep inside, with a shape error)."""
    if not saved:  # a checkpoint without its config: nothing to compare
        return
    # only the settings both name: a key added to the env configs since the checkpoint was
    # written (its default the behaviour of then) must not refuse an older run
    keys = sorted(set(saved) & set(asked), key=str)
    differ = [k for k in keys if saved.get(k) != asked.get(k)]
    if differ:
        was = ", ".join(f"{k}={saved.get(k)}" for k in differ)
        now = ", ".join(f"{k}={asked.get(k)}" for k in differ)
        raise ConfigError(
            f"{path} was trained on env={saved.get('name', '?')} with {was}; this run asks "
            f"for {now}: resume with the checkpoint's env settings, or start a new run"
        )


#: settings a resumed run may change: how long it runs, how it evaluates (how often, how
#: many episodes), saves and logs (and under which name), its threads, device and
#: collector (other workers: the run goes on, not exactly, as the restore says). Every
#: other setting is the run's own (networks, data, exploration, optimizer, seed, batch
#: sizes), restored from the checkpoint or tied to what it holds, so a change is refused
#: (:func:`check_resumable`): a new lr was written in the run's config while the optimizer
#: kept the old one, a new epsilon floor was mixed with the old schedule, a new seed
#: labelled seed 0's streams.
RESUMABLE_SETTINGS = frozenset(
    {
        "total_frames",
        "eval_interval",
        "eval_episodes",
        "experiment_name",
        "collector",
        "checkpoint_interval",
        "keep_checkpoints",
        "checkpoint_buffer",
        "checkpoint_buffer_max_mb",
        "logger",
        "wandb_offline",
        "wandb_project",
        "mlflow_tracking_uri",
        "output_dir",
        "resume",
        "overwrite",
        "kill_after_checkpoint",
        "progress",
        "threads",
        "reuse_freed_memory",
        "device",
    }
)


def _flat(cfg: Mapping, prefix: str = "") -> dict[str, object]:
    """``{"a.b": value}`` for every leaf of the nested mapping ``cfg``."""
    out: dict[str, object] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def check_resumable(path: Path, cfg: Mapping) -> int:
    """Raise a :class:`ConfigError` (one line) when the run config ``cfg`` differs from the
    one the checkpoint at ``path`` was written with in a setting outside
    :data:`RESUMABLE_SETTINGS`; called before anything of the run is built or written.
    Settings only one of the two names (added since the checkpoint was written) are not
    compared. Returns the checkpoint's frame count."""
    state = load_checkpoint(path, map_location="cpu")
    frames = int(state.get("frames", 0))
    saved = plain_config(state.get("config") or {})
    if not saved:  # a checkpoint without its config: nothing to compare
        return frames
    _check_same_env(path, saved.get("env"), cfg.get("env") or {})
    was, now = _flat(saved), _flat(plain_config(cfg))
    differ = [
        k
        for k in sorted(set(was) & set(now))
        if k.split(".")[0] not in RESUMABLE_SETTINGS and was[k] != now[k]
    ]
    if not differ:
        return frames
    if any(k == "algorithm.name" or k.startswith("agent.") for k in differ):
        raise ConfigError(
            f"{path} holds other networks than this run builds: it was trained with "
            f"{_model_of(saved)}, this run asks for {_model_of(cfg)}"
        )
    raise ConfigError(
        f"{path} was trained with {', '.join(f'{k}={was[k]}' for k in differ)}; this run asks "
        f"for {', '.join(f'{k}={now[k]}' for k in differ)}: a resumed run keeps its "
        "settings but how long it runs, how it evaluates, saves and logs, its threads, device "
        "and collector (checkpoint.RESUMABLE_SETTINGS); resume without these changes, or "
        "start a new run"
    )


def _threads(n: int) -> str:
    return f"{n} torch thread{'' if n == 1 else 's'}"


def restore(path: Path, run: RunState, cfg: Mapping, device: torch.device) -> dict:
    """Load the checkpoint at ``path`` into ``run`` (built as for a new run, collector
    included) and, with ``cfg["checkpoint_buffer"]``, the replay buffer saved with it
    (``path``'s directory's ``replay/``, used only when it was saved at the same frame
    count). Returns the loaded state (plain data)."""
    state = load_checkpoint(path, map_location=device)
    _check_same_env(path, (state.get("config") or {}).get("env"), cfg.get("env") or {})
    legacy = state.get("format") is None
    if legacy:  # written before FORMAT 2: one torch generator, the env's own one
        state["rng"] = {"torch": state["rng"]}
        state["env"] = {"rng": state.get("env_rng")}
    try:
        run.loss.load_state_dict(state["loss"])
    except RuntimeError as err:  # other networks: a checkpoint of another method or env
        raise ConfigError(
            f"{path} holds other networks than this run builds: it was trained with "
            f"{_model_of(state.get('config') or {})}, this run asks for {_model_of(cfg)}"
        ) from err
    run.optimizer.load_state_dict(state["optimizer"])
    run.egreedy.load_state_dict(state["egreedy"])
    for name, default in asdict(Progress()).items():
        setattr(run.progress, name, type(default)(state.get(name, default)))
    if "seconds" not in state:  # an earlier checkpoint: how long the run took is unknown
        run.progress.seconds = math.nan
    if run.capture is not None:
        run.capture.load_state_dict(state.get("capture"))
    load_env_state(run.env, state.get("env"))
    load_env_state(run.eval_env, state.get("eval_env"))
    exact = load_collector_state(run.collector, state.get("collector"))
    load_rng_state(state["rng"])
    if legacy:
        print(
            f"warning: {path} is a checkpoint of the earlier format (no env, collector, numpy "
            "or python generator state): the run continues from it, but not exactly as it "
            "would have (the episodes in flight at the checkpoint are lost)",
            flush=True,
        )
    elif not exact:
        why = (
            f"the {type(_base_env(run.env)).__name__} simulator's state cannot be saved"
            if "simulator" not in state["env"]
            else f"collector {type(run.collector).__name__} keeps its envs in other processes"
        )
        print(
            f"warning: {why}: the run continues from {path}, but starts new episodes (the "
            "ones in flight at the checkpoint are dropped): not exact",
            flush=True,
        )
    # checkpoints from before the count was recorded were written with threads=auto's
    # one thread of then (or OMP_NUM_THREADS): taken as 1, the likely case
    saved_threads, threads = int(state.get("threads", 1)), torch.get_num_threads()
    if saved_threads != threads:
        recorded = "" if "threads" in state else " (not recorded: 1 assumed, the default then)"
        print(
            f"warning: {path} was written with {_threads(saved_threads)}{recorded} and the run "
            f"continues with {threads}: torch splits its reductions over its threads, so "
            f"the run continues, but not bit for bit as it would have (threads={saved_threads} "
            "resumes exactly)",
            flush=True,
        )
    if str(cfg.get("checkpoint_buffer", "auto")).lower() not in ("false", "0"):
        replay, source = _replay_of(Path(path), run.progress.frames)
        if source is not None:  # replay/, or the copy kept while a newer one was written
            own = replay.parent.resolve() == Path(str(cfg["output_dir"])).resolve()
            if source != replay and own:
                # a crash left a newer replay than the checkpoint: it belongs to a future that
                # did not happen; the checkpoint's copy becomes replay/ again, so the next save
                # keeps it (as replay.prev) until the next checkpoint is in place
                shutil.rmtree(replay, ignore_errors=True)
                os.replace(source, replay)
                source = replay
            try:
                run.buffer.loads(source)
            except UnsafeCheckpointError:  # a dump that would run code: said as it is
                raise
            except (OSError, ValueError, KeyError, RuntimeError) as err:  # files gone, cut
                raise ConfigError(
                    f"the replay buffer saved with {path} at {source} cannot be read "
                    f"({type(err).__name__}: {' '.join(str(err).split())[:200]}): resume with "
                    "checkpoint_buffer=false to continue with an empty buffer"
                ) from err
        else:  # none saved, or saved by a run that died before its checkpoint
            tag = EpisodeReplayBuffer.tag_at(replay)
            found = "none there" if tag is None else f"the one there is of {tag} frames"
            print(
                f"warning: checkpoint_buffer: no replay buffer saved with the checkpoint at "
                f"{run.progress.frames} frames in {replay} ({found}); starting with an empty "
                "buffer",
                flush=True,
            )
    return state


# ---------------------------------------------------------------------------- safe loading


#: what a checkpoint of the earlier format holds besides plain data: the config as
#: ``dict(cfg)`` of an OmegaConf ``DictConfig`` (its nodes, metadata and the builtins they use)
def _omegaconf_globals() -> list:
    from omegaconf import DictConfig, ListConfig, base, nodes

    return [
        DictConfig,
        ListConfig,
        base.ContainerMetadata,
        base.Metadata,
        nodes.AnyNode,
        nodes.StringNode,
        nodes.IntegerNode,
        nodes.FloatNode,
        nodes.BooleanNode,
        typing.Any,
        dict,
        list,
        int,
        float,
        str,
        bool,
        collections.defaultdict,
    ]


#: how torch's weights-only unpickler names what it refused ("... GLOBAL posix.system ...")
_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = "cpu") -> dict:
    """The checkpoint at ``path`` as plain data, read with ``torch.load(weights_only=True)``:
    nothing in it is executed.

    Raises:
        CheckpointNotFoundError: there is no file at ``path``.
        UnsafeCheckpointError: it holds something other than tensors, numbers, strings and
            plain containers (e.g. a pickled object that would run code), or it is not a
            checkpoint; the message names what was refused.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _UNSUPPORTED.search(str(err))
        if found is None:
            raise UnsafeCheckpointError(
                f"{path} is not a readable checkpoint (not a file written by torch.save)"
            ) from None
        what = found.group(1)
        if not what.startswith("omegaconf."):
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds {what}, and a checkpoint may only hold "
                "tensors, numbers, strings and plain containers (it was not written by "
                "scripts/train.py, or was altered); it was not run"
            ) from None
        # the earlier format: its config is an OmegaConf container, allowed here and only here
        with torch.serialization.safe_globals(_omegaconf_globals()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=True)
            except pickle.UnpicklingError as again:
                found = _UNSUPPORTED.search(str(again))
                raise UnsafeCheckpointError(
                    f"refusing to load {path}: it holds "
                    f"{found.group(1) if found else 'an object that is not plain data'}, and a "
                    "checkpoint may only hold tensors, numbers, strings and plain containers; "
                    "it was not run"
                ) from None
        state["config"] = plain_config(state.get("config") or {})
    except Exception as err:  # a text or empty file: KeyError, IndexError... from inside torch
        lines = str(err).strip().splitlines()
        why = (
            lines[0]
            if lines and isinstance(err, (RuntimeError, OSError))
            else "not a file written by torch.save"
        )
        raise UnsafeCheckpointError(f"{path} is not a readable checkpoint ({why})") from None
    if not isinstance(state, dict) or "loss" not in state:
        raise UnsafeCheckpointError(
            f"{path} is not a checkpoint of scripts/train.py (no 'loss' entry)"
        )
    return state


#: pickle opcodes that import or call something: a plain-data pickle has none of them
def plain_config(cfg) -> dict:
    """``cfg`` (a dict, possibly holding OmegaConf containers) as plain dicts and lists."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, Mapping):
        return {str(k): plain_config(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [plain_config(v) for v in cfg]
    return cfg


# ------------------------------------------------------------------------------ generators


def rng_state() -> dict:
    """torch's CPU (and, once CUDA is in use, every CUDA device's), numpy's and Python's
    global generators, as tensors and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": {
            "version": int(version),
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def load_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "python" in state:
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss_next"]))


# ------------------------------------------------------------------------------------- envs


def _base_env(env: EnvBase):
    """The simulator under the transforms. Read from ``__dict__``-backed attributes: a
    closed ``SerialEnv``/``ParallelEnv`` recurses forever on a missing attribute lookup."""
    return getattr(env, "base_env", env)


def env_state(env: EnvBase) -> dict:
    """The state of ``env``'s simulator: what its ``simulator_state()`` returns (the
    library's envs and adapters define it where the state can be reached), else the state
    of its own ``torch.Generator`` ``rng``, if it has one."""
    base = _base_env(env)
    if callable(getattr(type(base), "simulator_state", None)):
        return {"simulator": base.simulator_state()}
    rng = vars(base).get("rng")
    return {"rng": rng.get_state() if isinstance(rng, torch.Generator) else None}


def _refresh_action_masks(env: EnvBase, base: EnvBase) -> None:
    """torchrl's ``ActionMask`` transform keeps its own copy of the action spec, whose mask
    it updates at each step and reset: after a simulator restore the base env's mask is the
    restored one and the copy still the one before (random actions from the transformed
    env's spec were then unavailable; SMAX)."""
    from torchrl.envs import ActionMask, Compose, TransformedEnv

    while isinstance(env, TransformedEnv):
        transforms = env.transform if isinstance(env.transform, Compose) else [env.transform]
        for transform in transforms:
            if isinstance(transform, ActionMask):
                mask = base.full_action_spec[transform.in_keys[0]].mask
                if mask is not None:
                    transform.action_spec.update_mask(mask.to(transform.action_spec.device))
        env = env.base_env


def load_env_state(env: EnvBase, state: Mapping | None) -> None:
    if not state:
        return
    base = _base_env(env)
    if state.get("simulator") is not None and callable(
        getattr(type(base), "load_simulator_state", None)
    ):
        base.load_simulator_state(state["simulator"])
        _refresh_action_masks(env, base)
    rng = vars(base).get("rng")
    if state.get("rng") is not None and isinstance(rng, torch.Generator):
        rng.set_state(state["rng"].cpu())


# -------------------------------------------------------------------------------- collector


def td_to_plain(td: TensorDictBase) -> dict:
    """A TensorDict as nested dicts of tensors that keep every level's batch size."""
    data = {}
    for key, value in td.items():
        if is_tensor_collection(value):
            data[key] = td_to_plain(value)
        elif isinstance(value, torch.Tensor):
            data[key] = value
        else:
            raise TypeError(f"cannot checkpoint the non-tensor entry {key!r} ({type(value)})")
    device = None if td.device is None else str(td.device)
    return {"batch_size": list(td.batch_size), "device": device, "data": data}


def td_from_plain(plain: Mapping) -> TensorDict:
    data = {k: td_from_plain(v) if isinstance(v, Mapping) else v for k, v in plain["data"].items()}
    return TensorDict(data, batch_size=plain["batch_size"], device=plain["device"])


def _single(collector) -> tuple[Collector | None, EpisodeAssembler | None]:
    """The single-process torchrl ``Collector`` of a run (``None`` for the other types) and
    the :class:`EpisodeAssembler` around it (``None`` when used bare)."""
    assembler = collector if isinstance(collector, EpisodeAssembler) else None
    inner = assembler.collector if assembler is not None else collector
    return (inner if type(inner) is Collector else None), assembler


def collector_state(collector) -> dict | None:
    """The runtime of a single-process torchrl ``Collector`` (torchrl 0.14) that its own
    ``state_dict`` leaves out - the carried TensorDict, the frame, iteration and trajectory
    counters - and the episodes its :class:`EpisodeAssembler` holds (in flight, and complete
    ones not yet handed out). ``None`` for other collectors (their envs live in other
    processes)."""
    inner, assembler = _single(collector)
    if inner is None:
        return None
    state = {
        "carrier": td_to_plain(inner._carrier),
        "frames": int(inner._frames),
        "iter": int(inner._iter),
        "traj_pool": inner._traj_pool.state_dict(),
    }
    if assembler is not None:
        episodes = assembler.state_dict()
        state["episodes"] = (
            None
            if episodes is None
            else {k: td_to_plain(v) if is_tensor_collection(v) else v for k, v in episodes.items()}
        )
    return state


def load_collector_state(collector, state: Mapping | None) -> bool:
    """Put back what :func:`collector_state` saved into a freshly built collector that has
    not been iterated yet; returns whether the collector's runtime was restored. A state
    written before :class:`EpisodeAssembler` (torchrl's ``trajs_per_batch`` trajectories:
    ``partial`` per trajectory id, ``complete``) is handed to its ``load_trajectories``."""
    inner, assembler = _single(collector)
    if state is None or inner is None or assembler is None:
        return False
    inner._carrier = td_from_plain(state["carrier"])
    inner._frames, inner._iter = state["frames"], state["iter"]
    inner._traj_pool.load_state_dict(state["traj_pool"])
    if "episodes" in state:
        episodes = state["episodes"]
        if episodes is not None:
            episodes = {
                k: td_from_plain(v) if isinstance(v, Mapping) else v for k, v in episodes.items()
            }
        assembler.load_state_dict(episodes)
    else:
        partial = {
            t: torch.cat([td_from_plain(c) for c in chunks], 0)
            for t, chunks in state["partial"].items()
        }
        complete = [td_from_plain(t) for t in state["complete"]]
        assembler.load_trajectories(partial, complete, inner._carrier)
    return True


__all__ = [
    "CHECKPOINT",
    "KEPT",
    "REPLAY",
    "FORMAT",
    "Progress",
    "RunState",
    "save",
    "restore",
    "load_checkpoint",
    "plain_config",
]
