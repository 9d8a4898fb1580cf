"""VMAS (vectorized multi-agent simulator) scenarios in the library's vocabulary.

torchrl's ``VmasEnv`` runs ``B`` copies of a scenario as one batched torch simulation (on
``device``, CPU or CUDA); :func:`make_vmas_env` adds the transforms that bring it to
docs/design.md's vocabulary:

- discrete actions (``continuous_actions=False``) as one categorical ``("agents", "action")``
  ``[B, N]``; every agent in one group named ``"agents"``;
- a team ``"reward"`` ``[B, 1]``: the mean (or sum, ``reward_reduction``) of the agents'
  rewards (:class:`~resq_torchrl.envs.transforms.TeamReward`);
- the time limit as ``"truncated"``: VMAS's own ``max_steps`` would report the limit as
  ``terminated``, so the simulator runs without one and torchrl's ``StepCounter`` ends the
  episode at ``max_steps`` with ``truncated`` (targets bootstrap through it); a scenario's
  own ``done`` (e.g. every agent on its goal) stays ``terminated``;
- ``"state"`` ``[B, N * obs]``: the agents' observations stacked (VMAS has no global state);
- ``("agents", "action_mask")`` all ``True`` (VMAS has no unavailable actions);
- the per-agent ``info`` diagnostics are dropped unless ``keep_info``.

Nothing leaves ``device``: with ``device=cuda`` the simulator, the transforms and every
tensor they write stay on the GPU. Needs the ``vmas`` extra (``pip install -e ".[vmas]"``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from tensordict import TensorDict
from torchrl.envs import Compose, EnvBase, ExcludeTransform, StepCounter, TransformedEnv
from torchrl.envs.utils import MarlGroupMapType

from resq_torchrl.envs.transforms import FixedActionMask, TeamReward, stacked_state


def _vmas_env_class():
    """torchrl's ``VmasEnv`` with partial resets that read the reset mask once.

    ``VmasEnv._reset`` loops ``for i, to_reset in enumerate(mask): if to_reset: reset_at(i)``
    over the (device) mask: on CUDA that is one device-to-host sync per env on every step
    where an episode ended. Here the indices to reset are read with one ``nonzero`` and the
    parent's loop gets an all-``False`` CPU mask, so it only reads the envs' new state."""
    from torchrl.envs.libs.vmas import VmasEnv

    class BatchedResetVmasEnv(VmasEnv):
        def _reset(self, tensordict=None, **kwargs):
            if tensordict is not None and "_reset" in tensordict.keys():
                envs = tensordict.get("_reset").squeeze(-1)
                if not bool(envs.all()):  # all: the parent's single full reset
                    for i in envs.nonzero().flatten().tolist():
                        self._env.reset_at(i, return_observations=False)
                    # no device on this TensorDict: the mask stays on the CPU
                    none = torch.zeros(envs.shape[0], 1, dtype=torch.bool)
                    tensordict = TensorDict({"_reset": none}, batch_size=envs.shape)
            return super()._reset(tensordict, **kwargs)

    return BatchedResetVmasEnv


def make_vmas(
    scenario: str,
    n_envs: int,
    max_steps: int,
    device="cpu",
    reward_reduction: str = "mean",
    keep_info: bool = False,
    seed: int | None = None,
    **scenario_kwargs,
) -> TransformedEnv:
    """``n_envs`` copies of VMAS ``scenario`` with discrete actions, in the vocabulary above.

    Args:
        scenario: a VMAS scenario name (``balance``, ``navigation``, ``transport``,
            ``wheel``, ``give_way``, ``football``, ...).
        n_envs: the number of vectorized copies (``batch_size=[n_envs]``).
        max_steps: the episode limit, reported as truncation.
        device: where the simulation runs (``"cpu"``, ``"cuda"``, ...).
        reward_reduction: ``"mean"`` or ``"sum"`` of the agents' rewards.
        keep_info: keep the scenario's per-agent ``("agents", "info")`` diagnostics.
        seed: the simulator's seed.
        **scenario_kwargs: the scenario's own options (``n_agents``, ...).
    """
    try:
        import vmas  # noqa: F401
    except ImportError as err:
        raise ImportError("VMAS needs the 'vmas' extra: pip install -e '.[vmas]'") from err
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    base = _vmas_env_class()(
        scenario,
        num_envs=int(n_envs),
        continuous_actions=False,
        categorical_actions=True,
        max_steps=None,  # the limit is StepCounter's truncation, not VMAS's termination
        device=torch.device(device),
        group_map=MarlGroupMapType.ALL_IN_ONE_GROUP,
        seed=seed,
        **scenario_kwargs,
    )
    transforms = []
    info = [k for k in base.observation_spec.keys(True, True) if k[:2] == ("agents", "info")]
    if info and not keep_info:
        transforms.append(ExcludeTransform(*info))
    transforms += [
        TeamReward(reward_reduction),
        StepCounter(int(max_steps), truncated_key="truncated"),
        stacked_state(),
        FixedActionMask(),
    ]
    return TransformedEnv(base, Compose(*transforms))


def make_vmas_env(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    """``env=vmas/<scenario>``: :func:`make_vmas` from the config's ``scenario``,
    ``max_steps``, ``reward_reduction``, ``keep_info`` and ``scenario_kwargs``."""
    if "scenario" not in env_cfg:
        raise KeyError("a vmas env config needs 'scenario' (e.g. balance)")
    return make_vmas(
        env_cfg["scenario"],
        n_envs,
        int(env_cfg["max_steps"]),
        device=device,
        reward_reduction=env_cfg.get("reward_reduction", "mean"),
        keep_info=bool(env_cfg.get("keep_info", False)),
        **dict(env_cfg.get("scenario_kwargs") or {}),
    )


__all__ = ["make_vmas", "make_vmas_env"]
