"""SMAX (JaxMARL's JAX re-implementation of SMAC) as a batched torchrl ``EnvBase``.

``B`` copies of ``jaxmarl.environments.smax.HeuristicEnemySMAX`` step together in one jitted,
``vmap``-ed call. Finished envs are reset *inside* that call: the step returns the terminal
transition (for ``("next", ...)``) and keeps the fresh first observation of each finished
env, which the following partial ``reset`` hands out without calling JAX again. Arrays go
from JAX to torch by DLPack (no copy on CPU: the tensors share JAX's buffers, read them
without writing in place, as torchrl does); actions go back the same way as ``int32``.

Vocabulary (docs/design.md), with ``N`` allies, ``E`` enemies and ``A = 5 + E`` actions (four
moves, stop, attack enemy ``j``):

- ``("agents", "observation")`` ``[B, N, obs]``: SMAX's ``unit_list`` observation;
- ``("agents", "action_mask")`` ``[B, N, A]``: SMAX's ``get_avail_actions`` (a dead ally can
  only take the stop action, index 4);
- ``"state"`` ``[B, S]``: SMAX's ``world_state``, scaled to ``[0, 1]`` like SMAC's
  state (``normalize_state``);
- ``"reward"`` ``[B, 1]``: the team reward (enemy health removed, normalised, plus
  ``won_battle_bonus``); every ally gets this same number in SMAX;
- ``"terminated"``: one side is dead; ``"truncated"``: the ``max_steps`` limit was hit
  without the battle ending (targets bootstrap through it); ``"battle_won"`` ``[B, 1]``:
  every enemy dead and an ally alive (``win_key: battle_won`` makes it ``eval/win_rate``).

Checkpoints restore it exactly (:meth:`SMAXEnv.simulator_state`: the JAX key, every copy's
JAX state and current observation) on the same JAX build and device; XLA may compile the
step differently on another, and a resumed run then diverges in the last bits.

Needs the ``smax`` extra (``pip install -e ".[smax]"``: ``jaxmarl`` with CPU ``jax``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Categorical, Unbounded
from torchrl.envs import ActionMask, EnvBase, TransformedEnv

from resq_torchrl.envs.specs import set_team_specs
from resq_torchrl.envs.transforms import ACTION_KEY, MASK_KEY

#: SMAX's index of the stop action (the only one a dead ally may take)
STOP_ACTION = 4


def _import_jax():
    try:
        import jax
        import jax.numpy as jnp
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "SMAX needs the 'smax' extra: pip install -e '.[smax]' (jaxmarl with CPU jax)"
        ) from err
    return jax, jnp, HeuristicEnemySMAX, map_name_to_scenario


def _to_torch(array, device: torch.device) -> torch.Tensor:
    """JAX array -> torch tensor through DLPack (shares memory on CPU), then to ``device``."""
    return torch.from_dlpack(array).to(device, non_blocking=True)


def _array_state(array) -> dict:
    """A JAX array as plain data: its dtype's name and its bytes as a torch tensor of the
    signed integer (or float, bool) type of the same width (torch stores no unsigned
    32-bit tensors in a ``weights_only`` checkpoint)."""
    data = np.array(array)  # a copy, off JAX's buffers
    dtype = data.dtype
    if dtype.kind == "u":
        data = data.view(f"int{8 * dtype.itemsize}")
    return {"dtype": dtype.name, "data": torch.from_numpy(data)}


def _array_from_state(state: Mapping, jnp):
    data = state["data"].cpu().numpy()
    return jnp.asarray(data.view(np.dtype(state["dtype"])))


def _world_state_scale(smax, jnp):
    """Per-entry scale of SMAX's ``world_state`` that brings it to ``[0, 1]`` as SMAC's
    state is: per unit ``[health fraction, x, y, weapon cooldown, one-hot type]`` with ``x``,
    ``y`` in map units (up to 32) and the cooldown in seconds, then every unit's team and
    type index. Positions are divided by the map size, cooldowns by the largest one, type
    indices by the number of types (the caller clips negative cooldowns to 0)."""
    n_units, n_own = smax.num_allies + smax.num_enemies, len(smax.own_features)
    unit = jnp.ones(n_own).at[1].set(1.0 / smax.map_width).at[2].set(1.0 / smax.map_height)
    unit = unit.at[3].set(1.0 / float(jnp.max(smax.unit_type_weapon_cooldowns)))
    teams = jnp.ones(n_units)
    types = jnp.full(n_units, 1.0 / smax.unit_type_bits)
    return jnp.concatenate([jnp.tile(unit, n_units), teams, types]).astype(jnp.float32)


def _build(map_name: str, max_steps: int, smax_kwargs: Mapping, normalize_state: bool = True):
    """The SMAX env and its jitted, vmapped ``reset_all(keys)``,
    ``step_all(keys, state, actions)`` and ``reset_where(keys, state, view, mask)``."""
    jax, jnp, enemy_smax, map_name_to_scenario = _import_jax()
    try:
        scenario = map_name_to_scenario(map_name)
    except KeyError as err:
        try:  # the maps jaxmarl knows, to list them
            from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

            known = f"; choose one of {sorted(MAP_NAME_TO_SCENARIO)}"
        except ImportError:  # pragma: no cover - another jaxmarl layout
            known = ""
        raise ValueError(f"unknown SMAX map {map_name!r}{known}") from err
    smax = enemy_smax(scenario=scenario, max_steps=max_steps, **smax_kwargs)
    agents = smax.agents
    n_allies = smax.num_allies
    state_scale = _world_state_scale(smax, jnp) if normalize_state else None

    def view(state):
        """Per-env tensors of a single-env state."""
        obs = smax.get_obs(state)
        avail = smax.get_avail_actions(state)
        world = smax.get_world_state(state).astype(jnp.float32)
        return {
            "observation": jnp.stack([obs[a] for a in agents]).astype(jnp.float32),
            # SMAX lets cooldowns run below zero (weapon ready): every scaled entry is in [0, 1]
            "state": world if state_scale is None else jnp.clip(world * state_scale, 0.0, 1.0),
            "action_mask": jnp.stack([avail[a] for a in agents]).astype(bool),
            "step_count": state.state.step.astype(jnp.int32).reshape(1),
        }

    def reset_one(key):
        _, state = smax.reset(key)
        # strong types, as step_env returns them: weakly typed fields (JaxMARL builds some
        # from Python numbers, e.g. the step counter) would make step_all compile a second
        # time on its second call
        state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), state)
        return state, view(state)

    def step_one(key, state, actions):
        step_key, reset_key = jax.random.split(key)
        _, stepped, rewards, _, _ = smax.step_env(
            step_key, state, {a: actions[i] for i, a in enumerate(agents)}
        )
        alive = stepped.state.unit_alive
        allies_dead = ~jnp.any(alive[:n_allies])
        enemies_dead = ~jnp.any(alive[n_allies:])
        terminated = allies_dead | enemies_dead
        # JaxMARL tests its limit before counting the step (episodes of max_steps + 1
        # steps): the limit is applied here, after the step is counted
        done = terminated | (stepped.state.step >= max_steps)
        next_view = view(stepped)
        reset_state, reset_view = reset_one(reset_key)
        keep = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, stepped)
        now = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_view, next_view)
        step_out = {
            **next_view,
            "reward": rewards[agents[0]].astype(jnp.float32).reshape(1),
            "terminated": terminated.reshape(1),
            "truncated": (done & ~terminated).reshape(1),
            "battle_won": (enemies_dead & ~allies_dead).reshape(1),
        }
        return keep, now, step_out, done

    reset_all = jax.jit(jax.vmap(reset_one))
    step_all = jax.jit(jax.vmap(step_one))

    def reset_where(keys, state, view_now, mask):
        new_state, new_view = jax.vmap(reset_one)(keys)

        def pick(new, old):
            m = mask.reshape(mask.shape + (1,) * (new.ndim - 1))
            return jnp.where(m, new, old)

        return jax.tree.map(pick, new_state, state), jax.tree.map(pick, new_view, view_now)

    return smax, reset_all, step_all, jax.jit(reset_where)


@functools.lru_cache(maxsize=16)
def _smax_functions(map_name: str, max_steps: int, smax_kwargs: tuple, normalize_state: bool):
    """:func:`_build` shared by every env of the same configuration (the training and the
    evaluation env compile once)."""
    return _build(map_name, max_steps, dict(smax_kwargs), normalize_state)


class SMAXEnv(EnvBase):
    """``batch_size=[B]`` copies of a SMAX scenario against JaxMARL's heuristic enemy.

    Args:
        map_name: a JaxMARL scenario name (``3m``, ``2s3z``, ``5m_vs_6m``, ``8m``, ``3s5z``,
            ``10m_vs_11m``, ``27m_vs_30m``, ``3s5z_vs_3s6z``, ``6h_vs_8z``,
            ``smacv2_5_units``, ...).
        batch_size: ``[B]``, the number of copies.
        device: where the tensors handed to torch live (JAX runs on its own default device).
        max_steps: the episode limit (a truncation), JaxMARL's default 100.
        seed: first JAX PRNG seed (``set_seed`` changes it).
        validate_actions: raise on an action the mask forbids (one host check per step).
        normalize_state: scale ``world_state`` to ``[0, 1]`` as SMAC's state is
            (positions by the map size, cooldowns by the largest); SMAX's raw state has
            positions up to 32, which drove QMIX's hypernetworks to TD losses in the
            hundreds in our first SMAX runs (docs/results.md).
        **smax_kwargs: passed to ``HeuristicEnemySMAX`` (``enemy_shoots``, ``attack_mode``,
            ``won_battle_bonus``, ``walls_cause_death``, ...).

    Example:
        >>> env = SMAXEnv("3m", batch_size=[8])
        >>> td = env.rollout(5)
        >>> td["agents", "action_mask"].shape
        torch.Size([8, 5, 3, 8])
    """

    def __init__(
        self,
        map_name: str = "3m",
        batch_size=(1,),
        device="cpu",
        max_steps: int = 100,
        seed: int = 0,
        validate_actions: bool = True,
        normalize_state: bool = True,
        **smax_kwargs,
    ):
        batch_size = torch.Size(batch_size)
        if len(batch_size) != 1 or batch_size[0] < 1:
            raise ValueError(f"SMAXEnv needs batch_size=[B] with B >= 1, got {list(batch_size)}")
        if int(max_steps) < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        super().__init__(batch_size=batch_size, device=device)
        jax, jnp, _, _ = _import_jax()
        self.map_name = map_name
        self.validate_actions = validate_actions
        self._jax, self._jnp = jax, jnp
        self.max_steps = int(max_steps)
        try:
            key = (map_name, self.max_steps, tuple(sorted(smax_kwargs.items())), normalize_state)
            hash(key)
        except TypeError:  # unhashable options (arrays): build for this env alone
            key = None
        built = (
            _smax_functions(*key)
            if key
            else _build(map_name, self.max_steps, smax_kwargs, normalize_state)
        )
        self.smax, self._reset_all, self._step_all, self._reset_where = built
        self.n_agents = self.smax.num_agents
        self.n_actions = self.smax.num_movement_actions + self.smax.num_enemies
        obs_dim = int(self.smax.observation_spaces[self.smax.agents[0]].shape[0])
        state_dim = int(self.smax.state_size)
        set_team_specs(self, self.n_agents, self.n_actions, obs_dim, state_dim)
        self.observation_spec["battle_won"] = Categorical(
            2, shape=(*self.batch_size, 1), dtype=torch.bool, device=self.device
        )
        self.observation_spec["step_count"] = Unbounded(
            shape=(*self.batch_size, 1), dtype=torch.int64, device=self.device
        )
        self._key = jax.random.PRNGKey(int(seed))
        self._state = None  # batched JAX state, set by the first reset
        self._out = None  # the observation, state, mask and step count of every env now
        self._fresh = torch.zeros(batch_size[0], dtype=torch.bool)  # reset inside last step

    def _split_keys(self):
        self._key, sub = self._jax.random.split(self._key)
        return self._jax.random.split(sub, self.batch_size[0])

    def _torch(self, arrays: Mapping) -> dict[str, torch.Tensor]:
        return {k: _to_torch(v, self.device) for k, v in arrays.items()}

    # --- checkpoints --------------------------------------------------------------------------
    def simulator_state(self) -> dict:
        """Everything the envs' future depends on, for checkpoints: the JAX PRNG key, every
        copy's JAX state (the leaves of its pytree), the current observations and which envs
        were reset inside the last step, as tensors. Restored into an env of the same map,
        options and batch size, the envs continue bit for bit (on the same JAX build and
        device: XLA may compile differently elsewhere)."""
        if self._state is None:
            return {"key": _array_state(self._key), "state": None, "fresh": self._fresh.clone()}
        return {
            "key": _array_state(self._key),
            "state": [_array_state(x) for x in self._jax.tree_util.tree_leaves(self._state)],
            "out": {k: _array_state(v) for k, v in self._out.items()},
            "fresh": self._fresh.clone(),
        }

    def load_simulator_state(self, state: Mapping) -> None:
        """Put back a :meth:`simulator_state`. The ``ActionMask`` of the env
        :func:`make_smax_env` wraps this one in keeps its own copy of the mask: restore
        through ``resq_torchrl.training.checkpoint.load_env_state(env, {"simulator":
        state})``, which refreshes it, for random actions from the wrapper's spec."""
        jax = self._jax
        if state["state"] is None:
            self._state = self._out = None
        else:
            if self._state is None:  # the pytree's structure: from any reset
                self._state, self._out = self._reset_all(self._split_keys())
            leaves = [_array_from_state(x, self._jnp) for x in state["state"]]
            treedef = jax.tree_util.tree_structure(self._state)
            self._state = jax.tree_util.tree_unflatten(treedef, leaves)
            self._out = {k: _array_from_state(v, self._jnp) for k, v in state["out"].items()}
            self._update_spec_mask(_to_torch(self._out["action_mask"], self.device))
        self._key = _array_from_state(state["key"], self._jnp)  # after the reset above
        self._fresh = state["fresh"].cpu().clone()

    # --- torchrl EnvBase ---------------------------------------------------------------------
    def _set_seed(self, seed: int | None):
        self._key = self._jax.random.PRNGKey(0 if seed is None else int(seed))
        self._state = None  # the next reset draws every env from the new key

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        b = self.batch_size[0]
        mask = None if tensordict is None else tensordict.get("_reset", None)
        mask = torch.ones(b, dtype=torch.bool) if mask is None else mask.reshape(b).cpu()
        if self._state is None:
            self._state, self._out = self._reset_all(self._split_keys())
        else:
            # envs finished by the last step were reset inside it; reset the others asked for
            fresh = mask & ~self._fresh
            if bool(fresh.any()):
                jmask = self._jnp.asarray(fresh.numpy())
                self._state, self._out = self._reset_where(
                    self._split_keys(), self._state, self._out, jmask
                )
        self._fresh &= ~mask
        view = self._torch(self._out)
        self._update_spec_mask(view["action_mask"])
        return self._output(view, None)

    def _update_spec_mask(self, mask: torch.Tensor) -> None:
        """Keep the action spec's mask on the current availability, as torchrl's SMACv2Env
        does, so that ``rand_action`` (``check_env_specs``, random rollouts) is valid."""
        self.full_action_spec["agents", "action"].update_mask(mask)

    def _output(self, view: dict, step: dict | None) -> TensorDictBase:
        b = self.batch_size
        src = view if step is None else step
        out = {
            ("agents", "observation"): src["observation"],
            ("agents", "action_mask"): src["action_mask"],
            "state": src["state"],
            "step_count": src["step_count"].long(),
        }
        if step is None:
            out["battle_won"] = torch.zeros(*b, 1, dtype=torch.bool, device=self.device)
        else:
            out["battle_won"] = step["battle_won"]
            out["reward"] = step["reward"]
            out["terminated"] = step["terminated"]
            out["truncated"] = step["truncated"]
            out["done"] = step["terminated"] | step["truncated"]
        td = TensorDict(batch_size=b, device=self.device)
        for k, v in out.items():
            td.set(k, v)
        td.get("agents").batch_size = torch.Size([*b, self.n_agents])
        return td

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        actions = tensordict.get(("agents", "action"))
        if actions.shape != (*self.batch_size, self.n_agents):
            raise ValueError(
                f"('agents', 'action') must be [{self.batch_size[0]}, {self.n_agents}], "
                f"got {list(actions.shape)}"
            )
        if self._state is None:
            raise RuntimeError("SMAXEnv: reset the env before stepping it (after set_seed too)")
        if self.validate_actions:  # against the env's own mask, not the caller's copy
            self._check_actions(torch.from_dlpack(self._out["action_mask"]), actions.cpu())
        # an uncommitted array, like the state's: a committed one (dlpack) commits step_all's
        # outputs, which would make its second call compile again for the new placement
        jactions = self._jnp.asarray(actions.detach().to("cpu", torch.int32).numpy())
        self._state, self._out, step_out, done = self._step_all(
            self._split_keys(), self._state, jactions
        )
        self._fresh = torch.from_dlpack(done).cpu().clone()
        self._update_spec_mask(_to_torch(self._out["action_mask"], self.device))
        return self._output({}, self._torch(step_out))

    def _check_actions(self, mask: torch.Tensor, actions: torch.Tensor) -> None:
        if ((actions < 0) | (actions >= self.n_actions)).any():
            raise ValueError(f"SMAX actions must lie in [0, {self.n_actions}), got {actions}")
        ok = mask.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        if not bool(ok.all()):
            env, agent = (~ok).nonzero()[0].tolist()
            raise ValueError(
                f"env {env}, agent {agent}: action {int(actions[env, agent])} is not available "
                f"(available: {mask[env, agent].nonzero().flatten().tolist()})"
            )


def make_smax_env(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    """``env=smax/<map>``: :class:`SMAXEnv` with ``n_envs`` copies; every config key other
    than ``family``/``name``/``win_key`` goes to the constructor."""
    kwargs = {k: v for k, v in env_cfg.items() if k not in ("family", "name", "win_key")}
    env = SMAXEnv(batch_size=[n_envs], device=device, **kwargs)
    # a TransformedEnv keeps its own copy of the action spec: torchrl's ActionMask keeps that
    # copy's mask on the current availability (random actions stay valid)
    return TransformedEnv(env, ActionMask(action_key=ACTION_KEY, mask_key=MASK_KEY))


__all__ = ["SMAXEnv", "make_smax_env", "STOP_ACTION"]
