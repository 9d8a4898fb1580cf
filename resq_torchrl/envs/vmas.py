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
  own ``done`` (e.g. every agent on its goal) stays ``terminated``, and a step that does
  both is a termination only (``truncated`` False);
- ``"state"`` ``[B, N * obs]``: the agents' observations stacked (VMAS has no global state);
- ``("agents", "action_mask")`` all ``True`` (VMAS has no unavailable actions);
- the per-agent ``info`` diagnostics are dropped unless ``keep_info``.

Nothing leaves ``device``: with ``device=cuda`` the simulator, the transforms and every
tensor they write stay on the GPU. Needs the ``vmas`` extra (``pip install -e ".[vmas]"``).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Mapping

import torch
from tensordict import TensorDict
from torchrl.envs import Compose, EnvBase, ExcludeTransform, StepCounter, TransformedEnv
from torchrl.envs.utils import MarlGroupMapType

from resq_torchrl.envs.transforms import (
    FixedActionMask,
    TeamReward,
    TruncationOnlyIfNotTerminated,
    stacked_state,
)


def _vmas_env_class():
    """torchrl's ``VmasEnv`` with partial resets that read the reset mask once.

    ``VmasEnv._reset`` loops ``for i, to_reset in enumerate(mask): if to_reset: reset_at(i)``
    over the (device) mask: on CUDA that is one device-to-host sync per env on every step
    where an episode ended. Here the indices to reset are read with one ``nonzero`` and the
    parent's loop gets an all-``False`` CPU mask, so it only reads the envs' new state."""
    from torchrl.envs.libs.vmas import VmasEnv
    from vmas.simulator.environment.environment import Environment

    class BatchedResetVmasEnv(VmasEnv):
        """Besides the batched resets: each env draws from its own random stream. VMAS keeps
        one (torch, numpy, python) generator triple on its ``Environment`` class, which
        every VMAS env in the process seeds and steps, so an env built later with another
        seed re-seeded this one's episodes, and an evaluation env's episodes changed the
        training env's. Each env here keeps its own triple, seeded when it is built, and
        puts it in VMAS's place for each of its own resets, steps and seedings."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._random = list(Environment.vmas_random_state)

        @contextlib.contextmanager
        def _own_random_stream(self):
            own = self.__dict__.get("_random")
            if own is None:  # while being built: VMAS's stream is this env's
                yield
                return
            shared = Environment.vmas_random_state
            # VMAS's decorator reads and rewrites this list in place
            shared[:] = own
            try:
                yield
            finally:
                self._random = list(shared)

        def _set_seed(self, seed):
            with self._own_random_stream():
                return super()._set_seed(seed)

        def _step(self, tensordict):
            with self._own_random_stream():
                return super()._step(tensordict)

        def _reset(self, tensordict=None, **kwargs):
            with self._own_random_stream():
                if tensordict is not None and "_reset" in tensordict.keys():
                    envs = tensordict.get("_reset").squeeze(-1)
                    if not bool(envs.all()):  # all: the parent's single full reset
                        for i in envs.nonzero().flatten().tolist():
                            self._env.reset_at(i, return_observations=False)
                        # no device on this TensorDict: the mask stays on the CPU
                        none = torch.zeros(envs.shape[0], 1, dtype=torch.bool)
                        tensordict = TensorDict({"_reset": none}, batch_size=envs.shape)
                return super()._reset(tensordict, **kwargs)

        def simulator_state(self) -> dict:
            """Everything the simulation's future depends on, for checkpoints: every tensor
            and number held by the VMAS objects (environment, world, entities and their
            states, scenario), by attribute path, and this env's random stream (the
            torch/numpy/python generator triple it steps and resets with)."""
            torch_rng, (_, keys, pos, has_gauss, gauss), (version, internal, gauss_next) = (
                self._random
            )
            return {
                "values": dict(_vmas_values(self._env)),
                "random": {
                    "torch": torch_rng.clone(),
                    "numpy": [torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
                    "python": [version, torch.tensor(internal, dtype=torch.int64), gauss_next],
                },
            }

        def load_simulator_state(self, state) -> None:
            """Put back a :meth:`simulator_state` (same scenario, options and batch size)."""
            saved = state["values"]
            for path, (owner, name, value) in _vmas_attributes(self._env):
                if path not in saved:
                    continue
                new = saved[path]
                if isinstance(value, torch.Tensor) and isinstance(new, torch.Tensor):
                    try:  # in place: other VMAS objects may hold the same tensor
                        value.copy_(new)
                        continue
                    except RuntimeError:  # an expanded view, a changed shape
                        new = new.clone().to(value.device)
                _set(owner, name, new)
            rnd = state["random"]
            keys, pos, has_gauss, gauss = rnd["numpy"]
            version, internal, gauss_next = rnd["python"]
            self._random = [
                rnd["torch"].cpu().clone(),
                ("MT19937", keys.cpu().numpy().astype("uint32"), pos, has_gauss, gauss),
                (version, tuple(internal.tolist()), gauss_next),
            ]

    return BatchedResetVmasEnv


def _vmas_attributes(root):
    """``(path, (owner, name, value))`` for every tensor, int, float and bool attribute of
    the VMAS objects reachable from ``root`` (objects of the ``vmas`` package, lists,
    tuples and dicts of them), each object once, in a fixed order."""
    seen, stack = set(), [("", root)]
    while stack:
        path, obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        items = (
            obj.items()
            if isinstance(obj, dict)
            else enumerate(obj)
            if isinstance(obj, (list, tuple))
            else vars(obj).items()
            if hasattr(obj, "__dict__") and not isinstance(obj, enum.Enum)
            else ()
        )
        children = []
        for i, (name, value) in enumerate(items):
            # a dict keyed by objects (entity -> force): by position, not by address
            where = f"{path}/{name if isinstance(name, (str, int)) else f'#{i}'}"
            if isinstance(value, (torch.Tensor, bool, int, float)):
                yield where, (obj, name, value)
            elif isinstance(value, (list, tuple, dict)) or _is_vmas_object(value):
                children.append((where, value))
        stack.extend(reversed(children))


def _is_vmas_object(value) -> bool:
    """An object of the ``vmas`` package, or a scenario (VMAS loads scenario modules from
    their files, under a module name outside the package)."""
    from vmas.simulator.scenario import BaseScenario

    return type(value).__module__.startswith("vmas.") or isinstance(value, BaseScenario)


def _vmas_values(root):
    for path, (_, _, value) in _vmas_attributes(root):
        yield path, value.detach().clone() if isinstance(value, torch.Tensor) else value


def _set(owner, name, value) -> None:
    if isinstance(owner, (list, dict)):
        owner[name] = value
    elif not isinstance(owner, tuple):
        setattr(owner, name, value)


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
        seed: the simulator's seed. Each env draws from its own stream (VMAS shares one
            among all its envs; see ``BatchedResetVmasEnv``), so another env built or
            stepped beside it does not change its episodes. On CUDA, VMAS's scenarios draw
            from torch's global CUDA generator, which VMAS's seeding sets
            (``torch.manual_seed``) but neither VMAS nor this class keeps per env.
        **scenario_kwargs: the scenario's own options (``n_agents``, ...).
    """
    try:
        import vmas  # noqa: F401
    except ImportError as err:
        raise ImportError("VMAS needs the 'vmas' extra: pip install -e '.[vmas]'") from err
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    known = [*vmas.scenarios, *vmas.mpe_scenarios, *vmas.debug_scenarios]
    if isinstance(scenario, str) and scenario.removesuffix(".py") not in known:
        # VMAS's own message is an AssertionError ten frames deep, without the choices
        raise ValueError(
            f"unknown VMAS scenario {scenario!r}; choose one of {sorted(vmas.scenarios)}"
        )
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
        TruncationOnlyIfNotTerminated(),
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
