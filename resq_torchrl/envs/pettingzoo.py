"""PettingZoo MPE tasks (the ``mpe2`` package) in the library's vocabulary (docs/design.md).

One mpe2 ``parallel_env`` is wrapped by torchrl's ``PettingZooWrapper`` with every agent in
the group ``"agents"``, categorical actions and the env's global ``state()``; ``n_envs`` copies
run in torchrl's ``SerialEnv`` (or ``ParallelEnv``, one process each). On top of the batch::

    ("agents", "observation")  [*B, N, obs]  float32
    ("agents", "action_mask")  [*B, N, A]    bool (constant: MPE has no unavailable actions)
    ("agents", "action")       [*B, N]       int64
    "state"                    [*B, S]       mpe2's state(): the agents' own observations
                                             concatenated (unpadded)
    "reward"                   [*B, 1]       mean (or sum) of the per-agent rewards
    "done", "terminated", "truncated" [*B, 1] bool

Checkpoints (``resq_torchrl.training.checkpoint``) cannot restore these envs exactly: each
copy's simulator (positions, velocities, communication, step count) and mpe2's own numpy
generator live inside the copy of a ``SerialEnv`` or in the worker process of a
``ParallelEnv``, and the adapter does not reach into them. A resumed run therefore starts
new episodes, drops the episodes that were in flight at the checkpoint (their steps never
reach the replay buffer), and from then on differs from the run that was not interrupted;
the networks, optimizer, replay buffer, counters and torch/numpy/python generators are
restored.

MPE ends every episode after ``max_cycles`` steps (``max_steps`` in the config) and reports
it as a truncation: the root ``truncated`` is ``True`` and ``terminated`` ``False`` there, so
targets bootstrap through the time limit. The per-agent done flags (all equal in MPE) and
per-agent rewards are dropped; the root ones are the any-reduction of the agents' flags.

Heterogeneous agents (``simple_speaker_listener``: a speaker with 3 observations and 3
actions, a listener with 11 observations and 5 actions) share one group by padding, done
inside the pettingzoo env by :class:`PadHeterogeneousAgents`:

- observations get zeros appended up to the largest observation size (nothing else is
  added: the agent-id input of the agent networks tells the agents apart);
- every agent gets the largest action count; the actions an agent does not have are
  ``False`` in ``("agents", "action_mask")`` and in the mask of the env's action spec
  (:class:`~resq_torchrl.envs.transforms.FixedActionMask`), so masked greedy,
  epsilon-greedy and ``env.rand_action`` never pick them. An agent given one of them raises
  a ``ValueError`` naming the agent: a padded action is never mapped to a real one.

Homogeneous tasks (``simple_spread``, ``simple_reference``) are not padded and their mask is
all ``True`` (``FixedActionMask()``).

Only cooperative tasks are accepted (:data:`COOPERATIVE_TASKS`): a task with adversaries
(``simple_tag``, ``simple_adversary``, ...) would put both sides in one group and average
their opposing rewards into one team reward, so it is refused with a one-line error.

Example::

    >>> env = make_pettingzoo_env(
    ...     {"task": "simple_speaker_listener", "max_steps": 25}, n_envs=4, device="cpu"
    ... )
    >>> env.set_seed(0)
    >>> env.rollout(25)["agents", "action_mask"].shape
    torch.Size([4, 25, 2, 5])
"""

from __future__ import annotations

import functools
import inspect
import re
import warnings
from collections.abc import Mapping
from types import ModuleType

import numpy as np
import torch
from gymnasium import spaces
from pettingzoo.utils.env import ParallelEnv as PettingZooParallelEnv
from pettingzoo.utils.wrappers import BaseParallelWrapper
from torchrl.envs import (
    Compose,
    EnvBase,
    ExcludeTransform,
    ParallelEnv,
    PettingZooWrapper,
    SerialEnv,
    TransformedEnv,
)

from resq_torchrl.envs.transforms import FixedActionMask, TeamReward

#: config keys read by the adapter; every other key is passed to the mpe2 task
ADAPTER_KEYS = ("family", "name", "task", "max_steps", "parallel", "reward_reduction", "win_key")


def mpe_task(task: str) -> ModuleType:
    """The mpe2 module of ``task``, with or without its version: ``"simple_spread"`` or
    ``"simple_spread_v3"``."""
    from mpe2.all_modules import mpe_environments

    modules = {name.split("/")[-1]: module for name, module in mpe_environments.items()}
    modules.update({re.sub(r"_v\d+$", "", name): module for name, module in modules.items()})
    if task not in modules:
        raise ValueError(f"unknown mpe2 task {task!r}; available: {sorted(modules)}")
    return modules[task]


class PadHeterogeneousAgents(BaseParallelWrapper):
    """A pettingzoo ``ParallelEnv`` whose agents all have the largest observation size and
    action count of the wrapped env's agents.

    Observations ``[obs_i]`` get ``obs - obs_i`` zeros appended; an action ``>= n_i`` (one of
    the padded actions of an agent with ``n_i`` actions) raises ``ValueError``.
    :meth:`action_mask` ``[N, A]`` says which actions each agent has.
    """

    def __init__(self, env: PettingZooParallelEnv):
        super().__init__(env)
        agents = env.possible_agents
        self.n_actions = {a: _discrete_space(env, a).n for a in agents}
        self.obs_sizes = {a: _flat_box_space(env, a).shape[0] for a in agents}
        self._observation_space = spaces.Box(
            -np.inf, np.inf, (max(self.obs_sizes.values()),), np.float32
        )
        self._action_space = spaces.Discrete(max(self.n_actions.values()))

    def observation_space(self, agent: str) -> spaces.Box:
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Discrete:
        return self._action_space

    def action_mask(self) -> torch.Tensor:
        """``[N, A]`` bool, agents in ``possible_agents`` order: ``True`` on real actions."""
        n = torch.tensor([self.n_actions[a] for a in self.possible_agents])
        return torch.arange(self._action_space.n) < n.unsqueeze(-1)

    def _pad(self, observations: dict) -> dict:
        size = self._observation_space.shape[0]
        return {a: np.pad(o, (0, size - o.shape[0])) for a, o in observations.items()}

    def reset(self, seed: int | None = None, options: dict | None = None):
        observations, infos = self.env.reset(seed=seed, options=options)
        return self._pad(observations), infos

    def step(self, actions: dict):
        for agent, action in actions.items():
            if not 0 <= int(action) < self.n_actions[agent]:
                raise ValueError(
                    f"agent {agent!r} has {self.n_actions[agent]} actions but was given action "
                    f"{int(action)}, a padded (masked) action; pick actions with "
                    "('agents', 'action_mask')"
                )
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        return self._pad(observations), rewards, terminations, truncations, infos


def _discrete_space(env: PettingZooParallelEnv, agent: str) -> spaces.Discrete:
    space = env.action_space(agent)
    if not isinstance(space, spaces.Discrete):
        raise ValueError(
            f"agent {agent!r} has action space {space}; the library needs discrete actions "
            "(leave continuous_actions unset)"
        )
    return space


def _flat_box_space(env: PettingZooParallelEnv, agent: str) -> spaces.Box:
    space = env.observation_space(agent)
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"agent {agent!r} has observation space {space}; expected a 1-D Box")
    return space


def _is_heterogeneous(env: PettingZooParallelEnv) -> bool:
    agents = env.possible_agents
    return (
        len({_discrete_space(env, a).n for a in agents}) > 1
        or len({_flat_box_space(env, a).shape for a in agents}) > 1
    )


def make_mpe_env(task: str, max_steps: int, **task_kwargs) -> PettingZooParallelEnv:
    """mpe2's ``parallel_env`` of ``task`` with ``max_cycles=max_steps``, padded by
    :class:`PadHeterogeneousAgents` when its agents differ in observation or action size."""
    if "max_cycles" in task_kwargs:
        raise ValueError("set the episode limit with max_steps, not max_cycles")
    if int(max_steps) < 1:  # mpe2 truncates every step then, in silence
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    module = mpe_task(task)
    options = [p for p in inspect.signature(module.raw_env.__init__).parameters if p != "self"]
    unknown = [k for k in task_kwargs if k not in options]
    if unknown:  # mpe2's TypeError came from deep inside, without the choices
        raise ValueError(
            f"mpe2 task {task!r} has no option {unknown[0]!r}; its options: "
            f"{[p for p in options if p != 'max_cycles']}"
        )
    env = module.parallel_env(max_cycles=int(max_steps), **task_kwargs)
    _check_one_team(env, task)
    return PadHeterogeneousAgents(env) if _is_heterogeneous(env) else env


#: mpe2's tasks whose agents form one team (no agent marked ``adversary``)
COOPERATIVE_TASKS = (
    "collect_treasure",
    "simple",
    "simple_formation",
    "simple_line",
    "simple_reference",
    "simple_speaker_listener",
    "simple_spread",
)


def _check_one_team(env: PettingZooParallelEnv, task: str) -> None:
    """Refuse a task that pits adversaries against the other agents (``simple_tag``,
    ``simple_adversary``, ``simple_push``, ``simple_crypto``, ``simple_world_comm``): the
    adapter puts every agent in one group with one team reward, the mean of opposing
    rewards (in ``simple_tag`` a capture would reward the team for catching its own
    member)."""
    agents = getattr(getattr(env.unwrapped, "world", None), "agents", ())
    adversaries = [a.name for a in agents if getattr(a, "adversary", False)]
    if adversaries and len(adversaries) < len(agents):
        others = [a.name for a in agents if not getattr(a, "adversary", False)]
        env.close()
        raise ValueError(
            f"mpe2 task {task!r} pits adversaries {adversaries} against {others}: the library "
            f"trains one cooperative team on one team reward; cooperative tasks: "
            f"{list(COOPERATIVE_TASKS)}"
        )


def wrap_mpe_env(task: str, max_steps: int, **task_kwargs) -> PettingZooWrapper:
    """One unbatched torchrl env of ``task``: the group ``"agents"``, categorical actions and
    the global ``"state"``."""
    env = make_mpe_env(task, max_steps, **task_kwargs)
    with warnings.catch_warnings():
        # torchrl warns for any pettingzoo but 1.24.3; mpe2 needs >= 1.25 and is tested here
        warnings.filterwarnings("ignore", "PettingZoo in TorchRL is tested", UserWarning)
        return PettingZooWrapper(
            env=env,
            group_map={"agents": list(env.possible_agents)},
            return_state=True,
            categorical_actions=True,
        )


def make_pettingzoo_env(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    """``n_envs`` copies of the mpe2 task ``env_cfg["task"]`` in the library's vocabulary.

    Args:
        env_cfg: ``task`` (e.g. ``simple_spread``), ``max_steps`` (mpe2's ``max_cycles``),
            ``parallel`` (``ParallelEnv`` instead of ``SerialEnv``, default ``False``),
            ``reward_reduction`` (``mean``, default, or ``sum``); every key not in
            :data:`ADAPTER_KEYS` goes to the task's ``parallel_env`` (``N``, ``local_ratio``...).
        n_envs: batch size of the returned env.
        device: where its outputs live (mpe2 itself steps on the CPU).
    """
    task, max_steps = env_cfg["task"], int(env_cfg["max_steps"])
    task_kwargs = {k: v for k, v in env_cfg.items() if k not in ADAPTER_KEYS}
    raw = make_mpe_env(task, max_steps, **task_kwargs)
    create = functools.partial(wrap_mpe_env, task, max_steps, **task_kwargs)
    batched = (ParallelEnv if env_cfg.get("parallel", False) else SerialEnv)(
        n_envs, create, device=device
    )
    mask = (
        FixedActionMask(raw.action_mask().to(device))
        if isinstance(raw, PadHeterogeneousAgents)
        else FixedActionMask()
    )
    raw.close()
    agent_done_keys = [("agents", key) for key in ("done", "terminated", "truncated")]
    return TransformedEnv(
        batched,
        Compose(
            ExcludeTransform(*agent_done_keys),
            TeamReward(env_cfg.get("reward_reduction", "mean")),
            mask,
        ),
    )


__all__ = [
    "COOPERATIVE_TASKS",
    "PadHeterogeneousAgents",
    "make_mpe_env",
    "make_pettingzoo_env",
    "mpe_task",
    "wrap_mpe_env",
]
