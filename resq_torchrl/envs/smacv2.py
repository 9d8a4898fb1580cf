"""SMACv2 (oxwhirl/smacv2, StarCraft II) through torchrl's ``SMACv2Env``, in the library's
vocabulary. Install and run instructions: ``docs/smac.md``.

torchrl's ``torchrl.envs.libs.smacv2.SMACv2Env`` already writes ``("agents", "observation")``
``[N, obs]``, ``("agents", "action_mask")`` ``[N, A]`` (its ``get_avail_actions``), ``"state"``
``[S]``, ``("agents", "action")`` ``[N]`` (categorical) and a team ``"reward"`` ``[1]``, plus
SMAC's info under ``"info"`` (``battle_won``, ``episode_limit``, ``dead_allies``,
``dead_enemies``, each ``[]``). :class:`SMACv2TeamEnv` subclasses it to fix what differs from
docs/design.md:

- torchrl sets ``terminated = done`` at the episode limit; here a time limit (SMAC's
  ``info["episode_limit"]``, reported because the game is built with
  ``continuing_episode=True``) is ``"truncated"`` ``[1]`` and not ``"terminated"``;
- ``"battle_won"`` ``[1]`` bool is copied from the info to the root, an observation entry
  read under ``"next"`` (``win_key: battle_won``);
- torchrl refuses ``set_seed`` (SMACv2 takes its seed at construction); here it rebuilds the
  game with the new seed, and construction no longer resets (launches) StarCraft II;
- an unavailable action raises a ``ValueError`` naming the agent and the action, and an agent
  with no available action is an error too (as in :class:`~resq_torchrl.envs.smac.SMACEnv`).

:func:`make_smacv2_env` batches ``n_envs`` of them as
:func:`~resq_torchrl.envs.smac.make_smac_env` does for SMAC v1.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.data import Categorical, Composite
from torchrl.envs import EnvBase
from torchrl.envs.libs.smacv2 import SMACv2Env

from resq_torchrl.envs.smac import (
    ADAPTER_KEYS,
    SEED_MODULUS,
    batch_envs,
    check_action_mask,
    check_actions,
    check_episode_limit,
)

SMACV2_INSTALL_HINT = (
    "SMACv2 needs oxwhirl's smacv2 package, installed from git: "
    "pip install git+https://github.com/oxwhirl/smacv2.git, plus the StarCraft II binary "
    "(SC2PATH) and the SMACv2 maps; see docs/smac.md"
)


class SMACv2TeamEnv(SMACv2Env):
    """One SMACv2 game (``batch_size=[]``) in the library's vocabulary: torchrl's
    ``SMACv2Env`` with the fixes listed in the module docstring.

    StarCraft II starts at the first ``reset``. ``set_seed(seed)`` closes the game and builds
    a new one with ``seed % 2**32`` (the game's seed); SMACv2's scenario draws (team
    composition, start positions) come from unseeded NumPy generators inside SMACv2 and are
    not reproducible from it.

    Args:
        map_name: ``10gen_protoss``, ``10gen_terran``, ``10gen_zerg`` (or a SMAC v1 map).
        capability_config: SMACv2's distribution config (``n_units``, ``n_enemies``,
            ``team_gen``, ``start_positions``); ``None`` plays the fixed map.
        seed: game seed of the first launch (``None``: StarCraft II picks one).
        expected_episode_limit: the episode limit the caller relies on (the trainer's
            ``max_steps``); a ``ValueError`` if the map's differs. ``None``: not checked.
        **kwargs: the other ``StarCraft2Env`` arguments (``conic_fov``, ``obs_own_pos``,
            ``use_unit_ranges``, ``min_attack_range``, ``reward_*``, ...) and torchrl's
            ``device``. ``continuing_episode`` and ``categorical_actions`` are always ``True``.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.load("configs/env/smacv2/protoss_5_vs_5.yaml")
        >>> cap = OmegaConf.to_container(cfg.capability_config)
        >>> env = SMACv2TeamEnv("10gen_protoss", capability_config=cap, obs_own_pos=True)
        >>> td = env.rollout(3)
        >>> td["next", "truncated"].shape, td["next", "battle_won"].dtype
        (torch.Size([3, 1]), torch.bool)
    """

    def __init__(
        self,
        map_name: str,
        capability_config: Mapping | None = None,
        seed: int | None = None,
        *,
        expected_episode_limit: int | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            import smacv2  # noqa: F401
        except ImportError as err:
            raise ImportError(SMACV2_INSTALL_HINT) from err
        if not kwargs.pop("continuing_episode", True):
            raise ValueError(
                "continuing_episode=False hides SMAC's episode-limit flag; the adapter always "
                "sets it to True to report a time limit as truncated"
            )
        if not kwargs.pop("categorical_actions", True):
            raise ValueError("the library's actions are categorical: categorical_actions=True")
        super().__init__(
            map_name=map_name,
            capability_config=None if capability_config is None else dict(capability_config),
            seed=None if seed is None else int(seed) % SEED_MODULUS,
            categorical_actions=True,
            continuing_episode=True,
            **kwargs,
        )
        self.episode_limit = int(self._env.get_env_info()["episode_limit"])
        check_episode_limit(
            expected_episode_limit, self.episode_limit, f"SMACv2 map {map_name!r}", self._env
        )

    def _build_env(self, **kwargs: Any) -> Any:
        # SMACv2's capability wrapper writes into its config: every build gets its own copy
        return super()._build_env(**copy.deepcopy(kwargs))

    def _make_specs(self, env: Any) -> None:
        super()._make_specs(env)
        flag = functools.partial(Categorical, 2, shape=(1,), dtype=torch.bool, device=self.device)
        self.done_spec = Composite(
            done=flag(), terminated=flag(), truncated=flag(), device=self.device
        )
        self.observation_spec["battle_won"] = flag()

    def _init_env(self) -> None:
        """Nothing to do: torchrl's ``SMACv2Env`` resets here, which launches StarCraft II
        only for ``set_seed`` to replace it; the first ``reset`` launches the game."""

    def _set_seed(self, seed: int | None) -> None:
        self._env.close()
        kwargs = dict(self._constructor_kwargs)
        kwargs["seed"] = None if seed is None else int(seed) % SEED_MODULUS
        self._env = self._build_env(**kwargs)
        self.full_action_spec[self.action_key].update_mask(None)  # the new game needs a reset

    def _to_tensor(self, value: Any) -> torch.Tensor:
        # SMAC hands a list of per-agent arrays: one array first (torch warns it is slow else)
        return torch.from_numpy(np.asarray(value, dtype=np.float32)).to(self.device)

    def _update_action_mask(self) -> torch.Tensor:
        mask = super()._update_action_mask()
        check_action_mask(mask)
        return mask

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        out = super()._reset(tensordict, **kwargs)
        for key in ("battle_won", "done", "terminated", "truncated"):
            out.set(key, torch.zeros(1, dtype=torch.bool, device=self.device))
        return out

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        mask = self.full_action_spec[self.action_key].mask
        if mask is None:
            raise RuntimeError(
                "SMACv2TeamEnv: reset the env before stepping it (after set_seed too)"
            )
        check_actions(tensordict.get(self.action_key), mask)
        out = super()._step(tensordict)
        truncated = out.get(("info", "episode_limit")).reshape(1)
        out.set("truncated", truncated)
        out.set("terminated", out.get("done") & ~truncated)
        out.set("battle_won", out.get(("info", "battle_won")).reshape(1))
        return out


def make_smacv2_env(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    """``env=smacv2/<scenario>``: ``n_envs`` :class:`SMACv2TeamEnv` games batched as
    ``batch_size=[n_envs]`` (``ParallelEnv`` when ``env_cfg["parallel"]``, default ``True``,
    and ``n_envs > 1``, else ``SerialEnv``; see :func:`~resq_torchrl.envs.smac.batch_envs`).

    Every config key but ``family``, ``name``, ``max_steps``, ``win_key`` and ``parallel``
    goes to ``SMACv2TeamEnv`` (``map_name``, ``capability_config``, ``StarCraft2Env``
    arguments); ``max_steps`` must equal the map's episode limit.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.to_container(OmegaConf.load("configs/env/smacv2/zerg_5_vs_5.yaml"))
        >>> env = make_smacv2_env(cfg, n_envs=4, device="cpu")  # 4 StarCraft II processes
        >>> env.reset()["agents", "action_mask"].shape
        torch.Size([4, 5, 11])
    """
    kwargs = {k: v for k, v in env_cfg.items() if k not in ADAPTER_KEYS}
    make_one = functools.partial(
        SMACv2TeamEnv, expected_episode_limit=env_cfg.get("max_steps"), device="cpu", **kwargs
    )
    return batch_envs(make_one, n_envs, device, parallel=bool(env_cfg.get("parallel", True)))


__all__ = ["SMACv2TeamEnv", "make_smacv2_env"]
