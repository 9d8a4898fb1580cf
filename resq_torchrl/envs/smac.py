"""SMAC v1 (oxwhirl/smac, StarCraft II) as a torchrl environment in the library's vocabulary.

torchrl has no wrapper for oxwhirl's ``smac`` package (only for SMACv2), so :class:`SMACEnv`
is an ``EnvBase`` over one ``smac.env.StarCraft2Env`` game, and :func:`make_smac_env` batches
``n_envs`` of them (one StarCraft II process each) with torchrl's ``ParallelEnv`` or
``SerialEnv``. Install and run instructions: ``docs/smac.md``.

Vocabulary (docs/design.md), with ``N`` agents, ``E`` enemies and ``A = 6 + E`` actions (no-op,
stop, four moves, attack or heal unit ``j``):

- ``("agents", "observation")`` ``[*B, N, obs]`` float32: ``get_obs()`` (zeros for a dead
  agent);
- ``("agents", "action_mask")`` ``[*B, N, A]`` bool: ``get_avail_actions()``; a dead agent
  may only take the no-op (action 0), a live one never;
- ``"state"`` ``[*B, S]`` float32: ``get_state()``;
- ``("agents", "action")`` ``[*B, N]`` int64, categorical;
- ``"reward"`` ``[*B, 1]``: SMAC's team reward (shaped and scaled by the ``reward_*``
  arguments);
- ``"terminated"`` ``[*B, 1]``: the battle ended (a side is dead); ``"truncated"``: the map's
  episode limit was hit first (SMAC's ``info["episode_limit"]``; targets bootstrap through
  it); ``"done" = terminated | truncated``;
- ``"battle_won"`` ``[*B, 1]`` bool: SMAC's ``info["battle_won"]`` (``win_key: battle_won``
  turns it into ``eval/win_rate``), an observation entry so that it is read under ``"next"``.

SMAC reports a time limit only when built with ``continuing_episode=True`` (otherwise the
step at the limit looks like any battle end), so the adapter always builds it that way; that
flag changes nothing else in SMAC. When the SC2 connection fails, SMAC restarts the game and
returns ``terminated`` with an empty info: that step is ``terminated``, not won.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical
from torchrl.envs import ActionMask, EnvBase, ParallelEnv, SerialEnv, TransformedEnv

from resq_torchrl.envs.specs import set_team_specs
from resq_torchrl.envs.transforms import ACTION_KEY, MASK_KEY

#: SMAC's no-op action, the only one a dead agent may take
NO_OP = 0
#: StarCraft II's game seed is a uint32
SEED_MODULUS = 2**32
#: env config keys read by the adapter or the trainer, never passed to StarCraft2Env
ADAPTER_KEYS = ("family", "name", "max_steps", "win_key", "parallel")

SMAC_INSTALL_HINT = (
    "SMAC v1 needs oxwhirl's smac package, installed from git: "
    "pip install git+https://github.com/oxwhirl/smac.git (NOT `pip install smac`: PyPI's "
    "smac is SMAC3, an unrelated optimizer), plus the StarCraft II binary (SC2PATH) and the "
    "SMAC maps; see docs/smac.md"
)


def _starcraft2env_class() -> Callable[..., Any]:
    """``smac.env.StarCraft2Env``, or an ``ImportError`` that says how to install it."""
    try:
        from smac.env import StarCraft2Env
    except ImportError as err:
        raise ImportError(SMAC_INSTALL_HINT) from err
    return StarCraft2Env


def check_episode_limit(expected: int | None, limit: int, game: str, sc2_env: Any) -> None:
    """Close ``sc2_env`` and raise a ``ValueError`` when the caller's ``expected`` episode
    limit (the trainer's ``max_steps``; ``None``: not checked) differs from the game's."""
    if expected is not None and int(expected) != limit:
        sc2_env.close()
        raise ValueError(
            f"max_steps={expected} but {game} has episode limit {limit}: set max_steps to the "
            "map's limit (it is the replay's episode length and the evaluation's rollout "
            "length)"
        )


def check_action_mask(mask: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the first agent of ``mask`` ``[N, A]`` (bool) that has
    no available action (SMAC always leaves at least the no-op)."""
    empty = ~mask.any(-1)
    if bool(empty.any()):
        agent = int(empty.nonzero()[0])
        raise ValueError(
            f"agent {agent} has no available action: the simulator's availability row is all "
            f"zeros (SMAC gives a dead agent the no-op, action {NO_OP})"
        )


def check_actions(actions: torch.Tensor, mask: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming the first agent whose action in ``actions`` ``[N]``
    (int) is out of range or not available in ``mask`` ``[N, A]`` (bool), before the
    simulator asserts on it."""
    n, a = mask.shape
    if actions.shape != (n,):
        raise ValueError(f"('agents', 'action') must be [{n}], got {list(actions.shape)}")
    actions = actions.to(mask.device)
    outside = (actions < 0) | (actions >= a)
    if bool(outside.any()):
        agent = int(outside.nonzero()[0])
        raise ValueError(f"agent {agent}: action {int(actions[agent])} is not in [0, {a})")
    ok = mask.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    if not bool(ok.all()):
        agent = int((~ok).nonzero()[0])
        available = mask[agent].nonzero().flatten().tolist()
        dead = f" (agent {agent} is dead: only the no-op)" if available == [NO_OP] else ""
        raise ValueError(
            f"agent {agent} cannot take action {int(actions[agent])}: its available actions "
            f"are {available}{dead}"
        )


class SMACEnv(EnvBase):
    """One SMAC v1 game (``batch_size=[]``, one StarCraft II process) in the library's
    vocabulary (see the module docstring for the entries and their shapes with ``*B = []``).

    The game is built at construction, but StarCraft II only starts at the first ``reset``
    (SMAC launches it there), so building the env, reading its specs and seeding it are cheap.

    Seeding: SMAC takes its seed as a constructor argument and hands it to StarCraft II when
    it launches the game. ``set_seed(seed)`` therefore closes the current game and builds a
    new one with ``seed % 2**32``; the next ``reset`` launches it. Seed before resetting (as
    ``make_env`` does): seeding mid-episode ends that episode.

    Actions are checked against the current ``action_mask`` before SMAC sees them: an action
    that is not available raises a ``ValueError`` naming the agent and the action (SMAC would
    fail an ``assert`` deep in its step), and so does an agent with no available action.

    Args:
        map_name: a SMAC map (``3m``, ``8m``, ``2s3z``, ``3s5z``, ``5m_vs_6m``, ``MMM2``,
            ``3s5z_vs_3s6z``, ``corridor``, ``6h_vs_8z``, ``27m_vs_30m``, ...).
        seed: game seed of the first launch (``None``: StarCraft II picks one).
        expected_episode_limit: the episode limit the caller relies on (the trainer's
            ``max_steps``, also the replay's episode length); a ``ValueError`` if the map's
            differs. ``None``: not checked.
        device: device of the returned tensors.
        sc2_env_factory: builds the game from ``StarCraft2Env``'s keyword arguments
            (default: ``smac.env.StarCraft2Env``); a seam for a subclass or a test stand-in.
            It must provide ``get_env_info``, ``reset``, ``get_obs``, ``get_state``,
            ``get_avail_actions``, ``step`` and ``close``.
        **sc2_kwargs: the other ``StarCraft2Env`` arguments (``difficulty``, ``reward_*``,
            ``obs_*``, ``step_mul``, ...). ``continuing_episode`` is always ``True``.

    Example:
        >>> env = SMACEnv("3m", difficulty="7")
        >>> td = env.reset()
        >>> td["agents", "action_mask"].shape
        torch.Size([3, 9])
        >>> td["agents", "action"] = td["agents", "action_mask"].float().argmax(-1)
        >>> env.step(td)["next", "battle_won"]
        tensor([False])
    """

    def __init__(
        self,
        map_name: str = "3m",
        *,
        seed: int | None = None,
        expected_episode_limit: int | None = None,
        device: torch.device | str = "cpu",
        sc2_env_factory: Callable[..., Any] | None = None,
        **sc2_kwargs: Any,
    ) -> None:
        if not sc2_kwargs.pop("continuing_episode", True):
            raise ValueError(
                "continuing_episode=False hides SMAC's episode-limit flag; the adapter always "
                "sets it to True to report a time limit as truncated"
            )
        super().__init__(device=device, batch_size=torch.Size([]))
        self._factory = sc2_env_factory if sc2_env_factory is not None else _starcraft2env_class()
        self._sc2_kwargs = {"map_name": map_name, "continuing_episode": True, **sc2_kwargs}
        self._sc2 = self._build(seed)
        info = self._sc2.get_env_info()
        self.map_name = map_name
        self.n_agents = int(info["n_agents"])
        self.n_actions = int(info["n_actions"])
        self.episode_limit = int(info["episode_limit"])
        check_episode_limit(
            expected_episode_limit, self.episode_limit, f"SMAC map {map_name!r}", self._sc2
        )
        set_team_specs(
            self, self.n_agents, self.n_actions, int(info["obs_shape"]), int(info["state_shape"])
        )
        self.observation_spec["battle_won"] = Categorical(
            2, shape=(1,), dtype=torch.bool, device=self.device
        )
        self._mask = None  # [N, A] bool on CPU, the availability the next step is checked on

    @property
    def sc2_env(self) -> Any:
        """The running ``StarCraft2Env`` (e.g. for ``save_replay()`` or ``get_stats()``)."""
        return self._sc2

    def _build(self, seed: int | None) -> Any:
        seed = None if seed is None else int(seed) % SEED_MODULUS
        return self._factory(seed=seed, **self._sc2_kwargs)

    def _set_seed(self, seed: int | None) -> None:
        self._sc2.close()
        self._sc2 = self._build(seed)
        self._mask = None

    def _observe(self) -> TensorDict:
        """Observation, action mask and state of the game now; records the mask."""
        obs = torch.from_numpy(np.asarray(self._sc2.get_obs(), dtype=np.float32))
        state = torch.from_numpy(np.asarray(self._sc2.get_state(), dtype=np.float32))
        mask = torch.from_numpy(np.asarray(self._sc2.get_avail_actions(), dtype=bool))
        check_action_mask(mask)
        self._mask = mask
        mask = mask.to(self.device)
        # keeps rand_action (check_env_specs, random rollouts) on available actions
        self.full_action_spec["agents", "action"].update_mask(mask)
        agents = TensorDict({"observation": obs, "action_mask": mask}, batch_size=[self.n_agents])
        return TensorDict({"agents": agents, "state": state}, batch_size=[], device=self.device)

    def _flags(self, **flags: bool) -> dict[str, torch.Tensor]:
        """Each flag as a ``[1]`` bool tensor."""
        return {
            k: torch.tensor([v], dtype=torch.bool, device=self.device) for k, v in flags.items()
        }

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        self._sc2.reset()
        out = self._observe()
        out.update(self._flags(battle_won=False, done=False, terminated=False, truncated=False))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self._mask is None:
            raise RuntimeError("SMACEnv: reset the env before stepping it (after set_seed too)")
        actions = tensordict.get(("agents", "action")).detach().cpu().long()
        check_actions(actions, self._mask)
        reward, terminated, info = self._sc2.step(actions.tolist())
        truncated = bool(info.get("episode_limit", False))
        terminated = bool(terminated) and not truncated
        out = self._observe()
        out.set("reward", torch.tensor([float(reward)], device=self.device))
        out.update(
            self._flags(
                battle_won=bool(info.get("battle_won", False)),
                done=terminated or truncated,
                terminated=terminated,
                truncated=truncated,
            )
        )
        return out

    def close(self, *, raise_if_closed: bool = True) -> None:
        """Close StarCraft II, then the env."""
        sc2 = self.__dict__.get("_sc2")
        if sc2 is not None:
            sc2.close()
        super().close(raise_if_closed=raise_if_closed)


def batch_envs(make_one: Callable[[], EnvBase], n_envs: int, device, parallel: bool) -> EnvBase:
    """``n_envs`` copies of ``make_one()`` (each a ``batch_size=[]`` env on CPU) as one env of
    ``batch_size=[n_envs]`` on ``device``: ``ParallelEnv`` (one worker process per copy, the
    copies step concurrently) when ``parallel`` and ``n_envs > 1``, else ``SerialEnv`` (the
    copies step one after the other in this process). Both work with torchrl's ``Collector``;
    ``make_one`` must be picklable for ``ParallelEnv`` (a ``functools.partial`` of a class)."""
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    if parallel and n_envs > 1:
        batched = ParallelEnv(n_envs, make_one, device=device)
    else:
        batched = SerialEnv(n_envs, make_one, device=device)
    # the batched env's action spec does not see the copies' masks: torchrl's ActionMask
    # keeps it on the current availability, so random actions (check_env_specs) stay valid
    return TransformedEnv(batched, ActionMask(action_key=ACTION_KEY, mask_key=MASK_KEY))


def make_smac_env(
    env_cfg: Mapping,
    n_envs: int,
    device,
    *,
    sc2_env_factory: Callable[..., Any] | None = None,
) -> EnvBase:
    """``env=smac/<map>``: ``n_envs`` :class:`SMACEnv` games batched as ``batch_size=[n_envs]``
    (see :func:`batch_envs`; ``env_cfg["parallel"]``, default ``True``, picks ``ParallelEnv``).

    Every config key but ``family``, ``name``, ``max_steps``, ``win_key`` and ``parallel``
    goes to ``StarCraft2Env``; ``max_steps`` must equal the map's episode limit.
    ``sc2_env_factory`` replaces ``smac.env.StarCraft2Env`` (tests inject a stand-in).
    """
    kwargs = {k: v for k, v in env_cfg.items() if k not in ADAPTER_KEYS}
    make_one = functools.partial(
        SMACEnv,
        expected_episode_limit=env_cfg.get("max_steps"),
        device="cpu",
        sc2_env_factory=sc2_env_factory,
        **kwargs,
    )
    return batch_envs(make_one, n_envs, device, parallel=bool(env_cfg.get("parallel", True)))


__all__ = [
    "SMACEnv",
    "make_smac_env",
    "batch_envs",
    "check_actions",
    "check_episode_limit",
    "check_action_mask",
    "NO_OP",
]
