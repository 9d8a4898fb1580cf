"""Relative-overgeneralisation diagnostic: what a method learns at the joint-capture states.

In predator-prey with a miscapture punishment, a capture needs two predators to ``catch``
next to the same prey at once, while a lone catch is punished. Under random play the joint
captures are rare and the lone catches frequent, so a monotonic ``Q_tot`` learns that
catching is bad (relative overgeneralisation) even where the central, unconstrained ``Q*``
has learnt the capture. This module measures that at the joint-capture states of a replay:

* :func:`capture_step_mask`, :func:`capture_agents` - the predicate (which stored steps had a
  capture) and which agents took part in it;
* :func:`taken_action_gap`, :func:`summarize_capture_states` - the catch gap
  ``Q_i(catch) - max_{a != catch, available} Q_i(a)`` and the share of agents (and of joint
  actions) whose masked greedy action is the capture;
* :func:`capture_state_metrics` - all of it read from a loss's own (unrolled) outputs on
  whole episodes: ``Q*`` (methods with a central value), ``Q_tot``, ``Q_jt``; with
  ``at="lone"`` the same at the lone-catch states (a step whose net reward is a punishment,
  the catchers whose catch captured nothing): whether ``Q_tot`` and the greedy policy have
  learnt that a lone catch is punished, or a residual (ResQ's ``Q_tot - Q_jt``) holds it;
* :func:`run_diagnostic` - ``scripts/diagnose_ro.py``: a fixed replay of random-play
  episodes (optionally with the capture episodes repeated), offline training of any method
  as ``train()`` trains it, the metrics every ``log_every`` updates, JSON and a plot;
* :class:`CaptureMonitor` - the two diagnostics ``train()`` logs: the running count of
  collected capture steps and, at each evaluation, the catch gap at the buffer's capture
  states.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from tensordict import TensorDictBase, pad
from tensordict.nn import TensorDictModuleBase, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.envs import EnvBase
from torchrl.objectives import ValueEstimators

from resq_torchrl.data import EpisodeReplayBuffer
from resq_torchrl.data.episodes import DEFAULT_EXCLUDE
from resq_torchrl.envs.predator_prey import CATCH, STAY
from resq_torchrl.errors import ConfigError, at_least, check_writable
from resq_torchrl.modules.rnn import LastActionWriter
from resq_torchrl.objectives.common import masked_greedy
from resq_torchrl.training.builders import (
    check_device,
    env_dims,
    env_family,
    gradient_step,
    make_env,
    make_loss,
    make_optimizer,
    make_target_updater,
)

ACTION_KEY = ("agents", "action")
MASK_KEY = ("agents", "action_mask")
NEXT_MASK_KEY = ("next", "agents", "action_mask")
REWARD_KEY = ("next", "reward")
PAD_KEY = EpisodeReplayBuffer.mask_key
#: the metrics of :func:`summarize_capture_states`, in table order
METRICS = ("q_star", "q_tot", "q_jt", "catch_gap", "greedy_agents", "greedy_joint")
#: the metrics the diagnostic also reads at the lone-catch states (logged as ``lone_<name>``,
#: with ``lone_steps`` and ``lone_residual = lone_q_tot - lone_q_jt``)
LONE_METRICS = ("q_tot", "q_jt", "catch_gap", "greedy_agents")
#: lone-catch episodes the diagnostic measures (the first ones of its replay)
LONE_EPISODES = 64

__all__ = [
    "CapturePredicate",
    "capture_predicate",
    "capture_step_mask",
    "capture_agents",
    "taken_action_gap",
    "summarize_capture_states",
    "capture_state_metrics",
    "RandomAvailablePolicy",
    "collect_random_episodes",
    "enrich_episodes",
    "buffer_capture_episodes",
    "CaptureMonitor",
    "run_diagnostic",
    "format_log_table",
    "save_plot",
]


# ---------------------------------------------------------------------------- the predicate
def capture_step_mask(
    reward: torch.Tensor, step_penalty: float = 0.0, threshold: float = 0.0
) -> torch.Tensor:
    """``reward - step_penalty > threshold``: the steps whose team reward holds a capture.

    In predator-prey a step's reward is ``capture_reward * captures + miscapture_punishment *
    lone_catches + step_penalty`` with ``capture_reward > 0 >= miscapture_punishment``: a step
    without a capture never exceeds ``step_penalty``, and one with a capture does unless its
    lone catches outweigh it (impossible with one prey; with ``M`` prey exact whenever
    ``capture_reward > |miscapture_punishment| * (M - 1)``, e.g. not the full 8-prey game,
    where a capture step together with 5 or more lone catches is missed).

    Args:
        reward: team rewards of any shape (a trailing singleton dim is kept).
        step_penalty: the env's per-step reward, removed first.
        threshold: 0 for predator-prey; for other envs the reward a step must exceed.
    """
    return (reward - step_penalty) > threshold


def capture_agents(
    action: torch.Tensor,
    next_mask: torch.Tensor,
    catch_action: int | None = CATCH,
    stay_action: int | None = STAY,
) -> torch.Tensor:
    """``[*B, N]`` bool: the agents that took part in a capture at a (capture) step.

    Predator-prey (``catch_action`` set): the agents that took ``catch`` and are frozen at
    the next step (their next action mask allows ``stay`` only: an active predator always
    has a move available on a grid of side >= 2); where a step has no such agent, every agent
    that took ``catch``. ``catch_action=None`` (envs without a capture action): every agent.

    Args:
        action: ``[*B, N]`` taken actions.
        next_mask: ``[*B, N, A]`` bool, the action masks at the next step.
    """
    if catch_action is None:
        return torch.ones_like(action, dtype=torch.bool)
    took = action == catch_action
    if stay_action is None:
        return took
    frozen = took & frozen_agents(next_mask, stay_action)
    return torch.where(frozen.any(-1, keepdim=True), frozen, took)


def frozen_agents(next_mask: torch.Tensor, stay_action: int) -> torch.Tensor:
    """``[*B, N]`` bool: the agents frozen at the next step (their next action mask
    ``[*B, N, A]`` allows ``stay_action`` only: an active predator always has a move
    available on a grid of side >= 2)."""
    next_mask = next_mask.bool()
    return next_mask[..., stay_action] & (next_mask.sum(-1) == 1)


@dataclass(frozen=True)
class CapturePredicate:
    """Where a replay's joint-capture steps are and which agents' actions are "the capture".

    Attributes:
        step_penalty: removed from the reward before the test (predator-prey's
            ``step_penalty``).
        threshold: a step is a capture step when ``reward - step_penalty > threshold``.
        catch_action: the capture action (predator-prey's ``catch``), ``None`` for envs
            without one (every agent's taken action is then "the capture").
        stay_action: the only action a frozen predator may take (``None``: no freezing).
    """

    step_penalty: float = 0.0
    threshold: float = 0.0
    catch_action: int | None = CATCH
    stay_action: int | None = STAY

    def steps(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[*B]`` bool: the real (non-padded) capture steps of ``tensordict`` (episodes
        ``[E, T]`` with ``("next", "reward")`` and optionally ``("collector", "mask")``)."""
        reward = tensordict.get(REWARD_KEY)
        return _real(tensordict, capture_step_mask(reward, self.step_penalty, self.threshold))

    def agents(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[*B, N]`` bool: :func:`capture_agents` at every step of ``tensordict``."""
        return capture_agents(
            tensordict.get(ACTION_KEY),
            tensordict.get(NEXT_MASK_KEY),
            self.catch_action,
            self.stay_action,
        )

    def lone_agents(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[*B, N]`` bool: the agents whose ``catch`` captured nothing (not frozen at the
        next step); all ``False`` without a catch action."""
        action = tensordict.get(ACTION_KEY)
        if self.catch_action is None:
            return torch.zeros_like(action, dtype=torch.bool)
        took = action == self.catch_action
        if self.stay_action is None:
            return took
        return took & ~frozen_agents(tensordict.get(NEXT_MASK_KEY), self.stay_action)

    def lone_steps(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``[*B]`` bool: the real lone-catch steps: net reward ``reward - step_penalty < 0``
        (a punishment outweighs any capture of the step) with an agent of
        :meth:`lone_agents`. In predator-prey with one prey, exactly the punished lone
        catches; with more prey, a step whose captures outweigh its lone catches is not
        one."""
        punished = (tensordict.get(REWARD_KEY) - self.step_penalty) < 0
        return _real(tensordict, punished) & self.lone_agents(tensordict).any(-1)


def _real(tensordict: TensorDictBase, hit: torch.Tensor) -> torch.Tensor:
    """``hit`` (any shape with ``tensordict``'s elements) as ``[*B]``, False at padding."""
    hit = hit.reshape(tensordict.batch_size)
    real = tensordict.get(PAD_KEY, None)
    return hit if real is None else hit & real.bool()


def capture_predicate(env_cfg: Mapping, threshold: float | None = None) -> CapturePredicate | None:
    """The predicate of an env config: predator-prey with ``capture_reward > 0`` (reward
    above the step penalty, catchers = frozen ``catch``-takers); any other env only with an
    explicit ``threshold`` (every agent's taken action counts); else ``None``."""
    family = env_family(env_cfg)
    if family == "predator_prey" and threshold is None:
        if float(env_cfg.get("capture_reward", 10.0)) <= 0:
            return None
        return CapturePredicate(step_penalty=float(env_cfg.get("step_penalty", 0.0)))
    if threshold is None:
        return None
    return CapturePredicate(threshold=float(threshold), catch_action=None, stay_action=None)


# ---------------------------------------------------------------------------- the metrics
def taken_action_gap(
    action_value: torch.Tensor, action: torch.Tensor, action_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[*B, N]``: ``Q_i(a_i) - max_{a != a_i, available} Q_i(a)`` (NaN when no other
    action is available). Positive iff ``a_i`` is the agent's unique masked greedy.

    Args:
        action_value: ``[*B, N, A]`` utilities.
        action: ``[*B, N]`` the actions (predator-prey's catch at the capture steps).
        action_mask: ``[*B, N, A]`` bool, ``None``: all available.
    """
    action = action.long().unsqueeze(-1)
    chosen = action_value.gather(-1, action).squeeze(-1)
    others = torch.ones_like(action_value, dtype=torch.bool)
    if action_mask is not None:
        others &= action_mask.bool()
    others.scatter_(-1, action, False)
    best_other = action_value.masked_fill(~others, -math.inf).max(-1).values
    return torch.where(others.any(-1), chosen - best_other, math.nan)


def summarize_capture_states(
    action_value: torch.Tensor,
    action_mask: torch.Tensor | None,
    action: torch.Tensor,
    greedy_action: torch.Tensor,
    agents: torch.Tensor,
    q_tot: torch.Tensor | None = None,
    q_jt: torch.Tensor | None = None,
    q_star: torch.Tensor | None = None,
) -> dict:
    """The metrics over ``S`` capture steps (all inputs already indexed at them).

    Args:
        action_value: ``[S, N, A]`` main utilities; ``action_mask`` ``[S, N, A]`` (or
            ``None``); ``action``, ``greedy_action`` ``[S, N]`` taken and masked greedy
            actions; ``agents`` ``[S, N]`` bool, the agents whose action is the capture.
        q_tot, q_jt, q_star: ``[S, 1]`` (``None``: not measured, e.g. ``q_star`` of a method
            without a central value).

    Returns:
        ``capture_steps`` (``S``), ``capture_agents`` (selected agents); means over the steps
        of ``q_star``, ``q_tot``, ``q_jt`` (``None`` where not given); ``catch_gap``: mean over
        the selected agents of :func:`taken_action_gap` (those with another available
        action); ``greedy_agents``: their share whose
        greedy is the capture; ``greedy_joint``: share of the steps (with a selected agent)
        where all selected agents' greedy is the capture. Values are ``None`` when ``S = 0``.
    """
    n_steps, n_agents = int(agents.shape[0]), int(agents.sum())
    out = {"capture_steps": n_steps, "capture_agents": n_agents}
    if n_steps == 0:
        return out | dict.fromkeys(METRICS)
    gap = taken_action_gap(action_value, action, action_mask)
    greedy = greedy_action == action
    has_agent = agents.any(-1)

    def mean(x: torch.Tensor | None) -> float | None:
        return float(x.float().mean()) if x is not None and x.numel() else None

    out.update(
        q_star=mean(q_star),
        q_tot=mean(q_tot),
        q_jt=mean(q_jt),
        catch_gap=mean(gap[agents & ~gap.isnan()]),
        greedy_agents=mean(greedy[agents]),
        greedy_joint=mean((greedy | ~agents).all(-1)[has_agent]),
    )
    return out


def _fixed_fractions(loss, tensordict: TensorDictBase) -> TensorDictBase:
    """Distributional losses read at fixed, evenly spaced fractions (no random draw)."""
    key = getattr(loss.tensor_keys, "fractions", None)
    if key is None:
        return tensordict
    k = int(getattr(loss, "n_quantiles", 8))
    mid = (torch.arange(k, dtype=torch.float32, device=tensordict.device) + 0.5) / k
    return tensordict.clone(False).set(key, mid.expand(*tensordict.batch_size, k))


def _central_value(loss, tensordict: TensorDictBase, joint: TensorDictBase):
    """``Q*`` ``[*B, 1]`` of the taken actions where the method has one, else ``None``."""
    if hasattr(loss, "central_q"):  # CW-/OW-QMIX, ResQ
        return loss.central_q(tensordict)
    if hasattr(loss, "central_mixer") and hasattr(loss, "_chosen_z"):  # ResZ: the mean of Z*
        z = loss._chosen_z("central_agent_network", "central_mixer", tensordict, joint["fractions"])
        return z.mean(-1, keepdim=True)
    return None


def _main_utilities(loss, tensordict: TensorDictBase) -> torch.Tensor:
    """The main agents' utilities ``[*B, N, A]`` alone (one network pass, no mixing)."""
    if getattr(loss.tensor_keys, "fractions", None) is not None:  # distributional: means
        return loss.joint_q(tensordict)["action_value"]
    return loss._agent_q("agent_network", tensordict)[0]


@torch.no_grad()
def capture_state_metrics(
    loss,
    episodes: TensorDictBase,
    predicate: CapturePredicate,
    values: bool = True,
    at: str = "capture",
) -> dict:
    """:func:`summarize_capture_states` at the capture steps of ``episodes`` ``[E, T]``,
    read from the loss's own outputs on the episodes up to their last capture step
    (recurrent agents unrolled from each episode's start): ``loss.joint_q`` and ``Q*`` where
    the method has one; with ``values=False`` only the main agents' utilities (catch gap and
    greedy shares, the value metrics ``None``: what ``train()`` logs, at a third of the cost
    for ResQ). Draws nothing from torch's generators.

    ``at="lone"``: the same at the lone-catch steps (:meth:`CapturePredicate.lone_steps`),
    over the agents whose catch captured nothing: ``catch_gap`` is then their
    ``Q_i(catch) - max other`` (negative: the lone catch is learnt as worse),
    ``greedy_agents`` the share of them whose greedy is still ``catch``."""
    if at not in ("capture", "lone"):
        raise ValueError(f"at={at!r}: expected 'capture' or 'lone'")
    steps = predicate.steps(episodes) if at == "capture" else predicate.lone_steps(episodes)
    if not bool(steps.any()):
        return {"capture_steps": 0, "capture_agents": 0} | dict.fromkeys(METRICS)
    last = int(steps.any(0).nonzero().max()) + 1  # later steps cannot change earlier values
    episodes, steps = episodes[:, :last], steps[:, :last]
    td = _fixed_fractions(loss, episodes)
    mask = episodes.get(MASK_KEY, None)
    q_tot = q_jt = q_star = None
    if values:
        joint = loss.joint_q(td)
        q, greedy = joint["action_value"], joint["greedy_action"]
        q_tot = joint["q_tot"][steps].mean(-1, keepdim=True)
        q_jt = joint["q_jt"][steps].mean(-1, keepdim=True)
        q_star = _central_value(loss, td, joint)
        q_star = None if q_star is None else q_star[steps]
    else:
        q = _main_utilities(loss, td)
        greedy = masked_greedy(q, mask, ~episodes.get(PAD_KEY).bool())
    return summarize_capture_states(
        q[steps],
        None if mask is None else mask[steps],
        episodes.get(ACTION_KEY)[steps],
        greedy[steps],
        (predicate.agents if at == "capture" else predicate.lone_agents)(episodes)[steps],
        q_tot,
        q_jt,
        q_star,
    )


# ---------------------------------------------------------------------------- the replay
class RandomAvailablePolicy(TensorDictModuleBase):
    """Uniformly random available actions: each agent samples among the ``True`` entries of
    its action mask ``[*B, N, A]`` (all actions without a mask, ``n_actions`` then needed),
    with its own ``torch.Generator``."""

    def __init__(
        self, generator: torch.Generator, n_actions: int | None = None, mask: bool = True
    ) -> None:
        super().__init__()
        self.generator, self.n_actions, self.use_mask = generator, n_actions, mask
        self.in_keys = [MASK_KEY] if mask else [("agents", "observation")]
        self.out_keys = [ACTION_KEY]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.use_mask:
            weights = tensordict.get(MASK_KEY).float()
        else:
            obs = tensordict.get(("agents", "observation"))
            weights = torch.ones(*obs.shape[:-1], self.n_actions, device=obs.device)
        flat = weights.reshape(-1, weights.shape[-1])
        action = torch.multinomial(flat, 1, generator=self.generator)
        tensordict.set(ACTION_KEY, action.reshape(weights.shape[:-1]))
        return tensordict


def collect_random_episodes(
    env: EnvBase, n_episodes: int, seed: int, n_actions: int, last_action: bool = False
) -> TensorDictBase:
    """``n_episodes`` whole episodes ``[E, max_len]`` of random play (uniform among the
    available actions) on the batched ``env`` (with its training transforms), collected by a
    ``Collector`` as ``train()`` collects them (``trajs_per_batch``, zero-padded, with
    ``("collector", "mask")``); ``last_action`` also writes the one-hot action the recurrent
    agents read. Seeded by ``seed`` (the actions) and the env's own seed."""
    if MASK_KEY not in env.observation_spec.keys(True):
        raise ValueError(
            "the diagnostic needs an env with an action mask ('agents', 'action_mask'); "
            f"this one has {sorted(map(str, env.observation_spec.keys(True, True)))}"
        )
    generator = torch.Generator(device=env.device).manual_seed(int(seed))
    modules = [RandomAvailablePolicy(generator)]
    if last_action:
        modules.append(LastActionWriter(n_actions))
    policy = TensorDictSequential(*modules)
    n_envs = env.batch_size[0]
    max_len = None
    collector = Collector(
        env,
        policy,
        frames_per_batch=n_envs * 25,
        total_frames=-1,
        trajs_per_batch=n_envs,
        traj_format="padded",
        device=env.device,
        use_buffers=False,  # see train(): keeps the agent dimension of the "agents" group
        trust_policy=True,  # a policy without parameters: nothing to move to a device
    )
    chunks, total = [], 0
    try:
        for batch in collector:
            chunks.append(batch.exclude(("collector", "traj_ids")))
            total += batch.shape[0]
            max_len = max(max_len or 0, batch.shape[1])
            if total >= n_episodes:
                break
    finally:
        collector.shutdown()
    chunks = [pad(c, [0, 0, 0, max_len - c.shape[1]]) for c in chunks]
    return torch.cat(chunks, 0)[:n_episodes]


def enrich_episodes(
    episodes: TensorDictBase, predicate: CapturePredicate, factor: int
) -> TensorDictBase:
    """``episodes`` ``[E, T]`` with every episode that holds a capture step appearing
    ``factor`` times (``factor=1``: unchanged), the copies appended at the end."""
    if factor < 1:
        raise ValueError(f"enrich must be >= 1, got {factor}")
    hits = predicate.steps(episodes).any(-1).nonzero().squeeze(-1)
    if factor == 1 or hits.numel() == 0:
        return episodes
    extra = episodes[hits.repeat(factor - 1)]
    return torch.cat([episodes, extra], 0)


def buffer_capture_episodes(
    buffer: EpisodeReplayBuffer,
    predicate: CapturePredicate,
    max_episodes: int = 32,
    generator: torch.Generator | None = None,
    max_steps: int | None = None,
) -> TensorDictBase | None:
    """Episodes of ``buffer`` holding a capture step, in a random order drawn with
    ``generator``: up to ``max_episodes`` of them and, with ``max_steps``, no more than keep
    ``episodes x longest unroll <= max_steps`` (at least one), each cut after its last
    capture step, then padded to the longest; ``None`` if the buffer holds none. Reads only
    the rewards and padding of the whole storage."""
    n = len(buffer)
    if n == 0:
        return None
    storage = buffer.buffer.storage
    data = storage._storage  # [capacity, slots]; torchrl's LazyTensorStorage keeps it here
    steps = predicate.steps(data[:n].select(REWARD_KEY, PAD_KEY))  # [n, T]
    hits = steps.any(-1).nonzero().squeeze(-1)
    if hits.numel() == 0:
        return None
    last = steps.shape[-1] - steps.flip(-1).int().argmax(-1)  # 1 + the last capture step
    order = torch.randperm(hits.numel(), generator=generator).to(hits.device)
    hits = hits[order][:max_episodes]
    if max_steps is not None:
        count = torch.arange(1, hits.numel() + 1, device=hits.device)
        cost = last[hits].cummax(0).values * count  # the unroll of the first k episodes
        hits = hits[: max(1, int((cost <= max_steps).sum()))]
    episodes = buffer.episodes(hits)  # every next entry rebuilt
    return episodes[:, : int(last[hits].max())]


# ---------------------------------------------------------------------------- during training
class CaptureMonitor:
    """The diagnostics ``train()`` logs where the env has a capture predicate:
    ``train/capture_steps`` (running count of collected capture steps) and, at each
    evaluation, ``eval/catch_gap`` and ``eval/catch_greedy`` (share of the catching agents
    whose greedy is catch) at the capture states of up to ``max_episodes`` buffer episodes,
    fewer when their unroll (episodes x steps up to the last capture) would exceed
    ``max_steps`` (the default 1600: 32 episodes of the small game's 50 steps, 8 of the full
    game's 200, about 3% of a 16-episode evaluation of the full game). It draws only from its
    own generator."""

    def __init__(
        self,
        predicate: CapturePredicate,
        max_episodes: int = 32,
        max_steps: int | None = 1600,
        seed: int = 0,
    ):
        self.predicate, self.max_episodes, self.max_steps = predicate, max_episodes, max_steps
        self.generator = torch.Generator().manual_seed(int(seed))
        self.total = 0

    @classmethod
    def from_env_cfg(cls, env_cfg: Mapping, **kwargs) -> CaptureMonitor | None:
        predicate = capture_predicate(env_cfg)
        return None if predicate is None else cls(predicate, **kwargs)

    def update(self, episodes: TensorDictBase) -> int:
        """Count the capture steps of collected ``episodes``; returns the running total."""
        self.total += int(self.predicate.steps(episodes).sum())
        return self.total

    def evaluate(self, loss, buffer: EpisodeReplayBuffer) -> dict:
        """``{"eval/catch_gap", "eval/catch_greedy", "eval/capture_states"}`` at the buffer's
        capture states (empty when it holds none)."""
        episodes = buffer_capture_episodes(
            buffer, self.predicate, self.max_episodes, self.generator, self.max_steps
        )
        if episodes is None:
            return {}
        device = next(loss.parameters()).device
        m = capture_state_metrics(loss, episodes.to(device), self.predicate, values=False)
        if m["catch_gap"] is None:
            return {}
        return {
            "eval/catch_gap": m["catch_gap"],
            "eval/catch_greedy": m["greedy_agents"],
            "eval/capture_states": m["capture_steps"],
        }

    def state_dict(self) -> dict:
        return {"total": self.total, "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping | None) -> None:
        if state:
            self.total = int(state["total"])
            self.generator.set_state(state["generator"])


# ---------------------------------------------------------------------------- offline run
def _loss_scalars(losses: TensorDictBase) -> dict:
    return {k: float(v) for k, v in losses.items() if v.numel() == 1}


def _episodes_at(episodes: TensorDictBase, index: torch.Tensor) -> TensorDictBase:
    """``episodes[index]`` cut to the longest of them (the steps the measurements unroll)."""
    picked = episodes[index]
    if index.numel():
        picked = picked[:, : int(picked.get(PAD_KEY).sum(-1).max())]
    return picked


def run_diagnostic(cfg: Mapping) -> dict:
    """``scripts/diagnose_ro.py``: train ``cfg["algorithm"]`` offline on a fixed replay of
    random-play episodes of ``cfg["env"]`` and follow the capture states (module docstring).

    Returns the JSON-ready result (also written to ``out_dir/diagnose_<algorithm>.json``,
    with the plot at ``out_dir/diagnose_<algorithm>.png``).
    """
    seed, device = int(cfg["seed"]), check_device(cfg["device"])
    for key in ("episodes", "n_envs", "updates", "log_every"):
        at_least(key, cfg[key], 1)
    at_least("lr", cfg.get("lr"), 0, strict=True)
    at_least("seed", seed, 0)  # the env's seeding takes no negative seed
    check_writable("out_dir", cfg.get("out_dir"), kind="dir")  # before the training
    env_cfg, algo, agent_cfg = cfg["env"], cfg["algorithm"], cfg["agent"]
    threshold = cfg.get("capture_threshold")
    if threshold is not None:
        try:
            float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(
                f"capture_threshold must be a number (the reward from which a step counts as "
                f"a capture) or null, got {threshold!r}"
            ) from None
    predicate = capture_predicate(env_cfg, threshold)
    if predicate is None:
        raise ValueError(
            f"env {env_cfg.get('name')!r} has no capture predicate: set capture_threshold= "
            "(a step is then a capture step when its team reward exceeds it)"
        )
    torch.manual_seed(seed)
    start = time.time()

    # the replay: fixed random play, then the capture episodes repeated `enrich` times
    # as in train(): a simulator seeding torch's generator in set_seed leaves the run's alone
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        env = make_env(env_cfg, int(cfg["n_envs"]), device, seed=seed)
    dims = env_dims(env)
    loss = make_loss(algo, agent_cfg, dims, device)
    if float(algo.get("td_lambda", 0.0)) > 0:
        loss.make_value_estimator(
            ValueEstimators.TDLambda, gamma=float(algo["gamma"]), lmbda=float(algo["td_lambda"])
        )
    primer = getattr(loss.agent_network, "make_tensordict_primer", None)
    if primer is not None:  # recurrent agents: hidden state and last action, as in train()
        env.append_transform(primer())
    last_action = ("agents", "last_action") in loss.agent_network.in_keys
    episodes = collect_random_episodes(
        env, int(cfg["episodes"]), seed, dims.n_actions, last_action=last_action
    )
    env.close()
    episodes = episodes.exclude(*DEFAULT_EXCLUDE)  # what the replay keeps, also for the metrics
    real = episodes.get(PAD_KEY)
    steps = predicate.steps(episodes)
    capture_eps = steps.any(-1).nonzero().squeeze(-1)
    capture_batch = _episodes_at(episodes, capture_eps)
    # the lone-catch states: the first LONE_EPISODES episodes holding one (they are common
    # under random play; a fixed subset bounds the cost of each measurement)
    lone = predicate.lone_steps(episodes)
    lone_eps = lone.any(-1).nonzero().squeeze(-1)[:LONE_EPISODES]
    lone_batch = _episodes_at(episodes, lone_eps)
    replay = enrich_episodes(episodes, predicate, int(cfg["enrich"]))
    replay_steps = predicate.steps(replay)
    buffer = EpisodeReplayBuffer(
        capacity=replay.shape[0],
        max_len=int(env_cfg["max_steps"]),
        batch_size=int(cfg["batch_episodes"]),
        device=device,
        prioritized=bool(cfg.get("prioritized_replay", False)),
        alpha=float(cfg.get("priority_alpha", 0.6)),
        beta=float(cfg.get("priority_beta", 0.4)),
    )
    buffer.extend(replay)
    data = {
        "episodes": int(episodes.shape[0]),
        "steps": int(real.sum()),
        "capture_steps": int(steps.sum()),
        "capture_episodes": int(capture_eps.numel()),
        "capture_step_share": float(steps.sum() / real.sum()),
        "lone_catch_steps": int(lone.sum()),
        "lone_catch_episodes_measured": int(lone_eps.numel()),
        "replay_episodes": int(replay.shape[0]),
        "replay_steps": int(replay.get(PAD_KEY).sum()),
        "replay_capture_steps": int(replay_steps.sum()),
        "replay_capture_step_share": float(replay_steps.sum() / replay.get(PAD_KEY).sum()),
        "collect_seconds": time.time() - start,
    }

    optimizer = make_optimizer(loss, cfg["optimizer"], float(cfg["lr"]), float(cfg["optim_eps"]))
    target_updater = make_target_updater(loss, interval=int(cfg["target_update_interval"]))
    grad_clip, log_every, n_updates = (
        float(cfg["grad_clip"]),
        int(cfg["log_every"]),
        int(cfg["updates"]),
    )
    capture_batch, lone_batch = capture_batch.to(device), lone_batch.to(device)
    log: list[dict] = []

    def record(update: int, losses: TensorDictBase | None) -> None:
        entry = {"update": update}
        if capture_eps.numel():
            entry.update(capture_state_metrics(loss, capture_batch, predicate))
        if lone_eps.numel():
            at_lone = capture_state_metrics(loss, lone_batch, predicate, at="lone")
            entry.update({f"lone_{k}": at_lone[k] for k in LONE_METRICS})
            entry["lone_steps"] = at_lone["capture_steps"]
            q_tot, q_jt = at_lone["q_tot"], at_lone["q_jt"]
            entry["lone_residual"] = None if None in (q_tot, q_jt) else q_tot - q_jt
        if losses is not None:
            entry.update({f"loss/{k}": v for k, v in _loss_scalars(losses).items()})
        log.append(entry)
        if cfg.get("progress", True):
            print(format_log_table([entry], header=not log[:-1]), flush=True)

    record(0, None)
    for update in range(1, n_updates + 1):
        losses, _ = gradient_step(loss, optimizer, buffer.sample().to(device), grad_clip, buffer)
        target_updater.step()  # copies every target_update_interval-th call
        if update % log_every == 0 or update == n_updates:
            record(update, losses)

    result = {
        "algorithm": algo["name"],
        "seed": seed,
        "data": data,
        "log": log,
        "final": log[-1],
        "seconds": time.time() - start,
        "config": dict(cfg),
    }
    out_dir = Path(cfg["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"diagnose_{algo['name']}.json"
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(json_path)
    png_path = out_dir / f"diagnose_{algo['name']}.png"
    save_plot(result, png_path)
    result["json_path"], result["png_path"] = str(json_path), str(png_path)
    return result


# ---------------------------------------------------------------------------- reporting
def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def format_log_table(log: list[dict], header: bool = True) -> str:
    """Rows ``update | Q* | Q_tot | Q_jt | catch gap | greedy agents | greedy joint`` at the
    capture states, then ``lone gap | lone greedy | lone residual`` at the lone-catch
    states."""
    cols = ("update", *METRICS, "lone_catch_gap", "lone_greedy_agents", "lone_residual")
    names = (
        "update",
        "Q*",
        "Q_tot",
        "Q_jt",
        "catch_gap",
        "greedy_agents",
        "greedy_joint",
        "lone_gap",
        "lone_greedy",
        "lone_residual",
    )
    rows = [[_fmt(e.get(c)) for c in cols] for e in log]
    widths = [max(len(n), 6) for n in names]  # fixed: rows printed one by one line up
    lines = ["  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True))] if header else []
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def save_plot(result: Mapping, path: str | Path) -> None:
    """Three panels over updates: ``Q*``/``Q_tot``/``Q_jt``, the catch gap, the greedy
    shares (at the capture states)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = result["log"]
    updates = [e["update"] for e in log]

    def series(key):
        return [math.nan if e.get(key) is None else e[key] for e in log]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for key, label, style in (
        ("q_star", "Q*", "-"),
        ("q_tot", "Q_tot", "-"),
        ("q_jt", "Q_jt", "--"),
    ):
        if any(e.get(key) is not None for e in log):  # Q_jt dashed: often equal to Q_tot
            axes[0].plot(updates, series(key), style, label=label)
    axes[0].set_title("values of the taken capture action")
    if axes[0].get_legend_handles_labels()[0]:  # no capture state: nothing to label
        axes[0].legend()
    axes[1].plot(updates, series("catch_gap"), color="C3", label="capture states")
    if any(e.get("lone_catch_gap") is not None for e in log):
        axes[1].plot(updates, series("lone_catch_gap"), color="C4", label="lone-catch states")
        axes[1].legend()
    axes[1].axhline(0.0, color="grey", lw=0.8)
    axes[1].set_title("catch gap Q_i(catch) - max other")
    axes[2].plot(updates, series("greedy_agents"), label="capture: agents")
    axes[2].plot(updates, series("greedy_joint"), label="capture: joint actions")
    if any(e.get("lone_greedy_agents") is not None for e in log):
        axes[2].plot(updates, series("lone_greedy_agents"), label="lone catchers")
    axes[2].set_ylim(-0.05, 1.05)
    axes[2].set_title("greedy = catch (share)")
    axes[2].legend()
    for ax in axes:
        ax.set_xlabel("updates")
    d = result["data"]
    fig.suptitle(
        f"{result['algorithm']}: {d['capture_steps']} capture steps in {d['episodes']} "
        f"random-play episodes, replay share {100 * d['replay_capture_step_share']:.3f}%"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
