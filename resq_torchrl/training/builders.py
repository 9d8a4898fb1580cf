"""Build losses, optimizers and target updaters from Hydra configs.

Adding a method means adding a config under ``configs/algorithm/``, its loss under
``resq_torchrl/objectives/`` and one builder in :data:`LOSS_BUILDERS`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, InitTracker, RewardSum, TransformedEnv
from torchrl.objectives import HardUpdate, LossModule, SoftUpdate
from torchrl.objectives.utils import TargetNetUpdater

from resq_torchrl.envs import MatrixGameEnv, PredatorPreyEnv
from resq_torchrl.errors import ConfigError, MissingDependencyError, is_whole
from resq_torchrl.modules import (
    DMIXMixer,
    FeedForwardMixer,
    IQNAgentMLP,
    MultiAgentGRU,
    MultiAgentIQN,
    QattenMixer,
    QMixer,
    QPLEXMixer,
    QTranJointNetwork,
    QuantileMixer,
    VDNMixer,
    make_agent_qnet,
)
from resq_torchrl.objectives import (
    DDNLoss,
    DMIXLoss,
    QMIXLoss,
    QPLEXLoss,
    QTRANLoss,
    ResQLoss,
    ResZLoss,
    VDNLoss,
    WeightedQMIXLoss,
)

#: where agent networks write their per-agent features when a loss reads them (QTRAN)
FEATURES_KEY = ("agents", "features")


@dataclass(frozen=True)
class EnvDims:
    """What a builder needs to know about the environment."""

    n_agents: int
    n_actions: int
    obs_dim: int
    state_dim: int


def env_dims(env: EnvBase) -> EnvDims:
    """Read the sizes a builder needs from an env in the library's vocabulary."""
    obs = env.observation_spec["agents", "observation"].shape
    return EnvDims(
        n_agents=obs[-2],
        n_actions=env.full_action_spec["agents", "action"].space.n,
        obs_dim=obs[-1],
        state_dim=env.observation_spec["state"].shape[-1],
    )


def _make_matrix_game(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    return MatrixGameEnv(env_cfg.get("payoff"), batch_size=[n_envs], device=device)


def _make_predator_prey(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
    adapter = ("name", "family", "max_steps", "win_key")  # config keys, not env arguments
    kwargs = {k: v for k, v in env_cfg.items() if k not in adapter}
    # max_steps is the replay's episode length, episode_limit the env's: one number (the
    # yaml ties them; a dict without episode_limit built 200-step episodes for max_steps=20)
    limit, steps = kwargs.get("episode_limit"), env_cfg.get("max_steps")
    if limit is None and steps is not None:
        kwargs["episode_limit"] = steps
    elif limit is not None and steps is not None and limit != steps:
        raise ConfigError(
            f"env.episode_limit={limit} and env.max_steps={steps} differ: the episodes' "
            "limit is the replay's episode length; set one (configs/env/predator_prey.yaml "
            "ties episode_limit to max_steps)"
        )
    return PredatorPreyEnv(batch_size=[n_envs], device=device, **kwargs)


def _lazy(module: str, fn: str, extra: str) -> Callable[[Mapping, int, object], EnvBase]:
    """Builder from an adapter module imported on first use: a third-party simulator
    (vmas, mpe2, smac, jaxmarl) is only needed by the runs that use it, and a missing one
    names the package ``extra`` that installs it."""

    def build(env_cfg: Mapping, n_envs: int, device) -> EnvBase:
        try:
            adapter = importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise MissingDependencyError(
                f"env={env_family(env_cfg)} needs {err.name!r}, which is not installed: {extra}"
            ) from err
        return getattr(adapter, fn)(env_cfg, n_envs, device)

    return build


#: env families; a config selects one with ``family`` (else ``name``), e.g. ``env=vmas/balance``
ENV_BUILDERS: dict[str, Callable[[Mapping, int, object], EnvBase]] = {
    "matrix_game": _make_matrix_game,
    "predator_prey": _make_predator_prey,
    "vmas": _lazy("resq_torchrl.envs.vmas", "make_vmas_env", "pip install -e '.[vmas]'"),
    "pettingzoo": _lazy(
        "resq_torchrl.envs.pettingzoo", "make_pettingzoo_env", "pip install -e '.[pettingzoo]'"
    ),
    "smac": _lazy("resq_torchrl.envs.smac", "make_smac_env", "see docs/smac.md"),
    "smacv2": _lazy("resq_torchrl.envs.smacv2", "make_smacv2_env", "see docs/smac.md"),
    "smax": _lazy("resq_torchrl.envs.smax", "make_smax_env", "pip install -e '.[smax]'"),
}


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a :class:`ConfigError` when it names a device that this
    machine or this torch build does not have (a CUDA device, another accelerator type), or
    ``meta`` (no data)."""
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device={device!r} is not a device: {err}") from None
    if device.type == "meta":  # shapes without data: every env and loss fails inside torch
        raise ConfigError(
            "device=meta holds no data, so nothing can be simulated or trained on it; use "
            "device=cpu or device=cuda"
        )
    if device.type not in ("cpu", "cuda"):
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ConfigError(
                f"device={device} was asked for, but this torch has no such device available;"
                " use device=cpu or device=cuda"
            )
        return device
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) is a CPU-only build: install a CUDA build of "
            "torch first (README, 'On a GPU')"
            if torch.version.cuda is None
            else "no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)"
        )
        raise ConfigError(f"device={device} was asked for, but {why}; or use device=cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device={device} was asked for, but there are {torch.cuda.device_count()} CUDA "
            "device(s)"
        )
    return device


def make_env(env_cfg: Mapping, n_envs: int, device="cpu", seed: int | None = None) -> EnvBase:
    """Batched env of family ``env_cfg["family"]`` (or ``env_cfg["name"]``) with ``n_envs``
    copies, plus the transforms training needs: ``InitTracker`` (``"is_init"``) and
    ``RewardSum`` (``"episode_reward"``)."""
    family = env_family(env_cfg)
    if family not in ENV_BUILDERS:
        raise ConfigError(f"unknown env family {family!r}; available: {sorted(ENV_BUILDERS)}")
    _whole("n_envs", n_envs, 1)
    device = check_device(device)
    env = ENV_BUILDERS[family](env_cfg, int(n_envs), device)
    if not isinstance(env, TransformedEnv):  # adapters bring their own transforms: extend them
        env = TransformedEnv(env)
    env.append_transform(InitTracker())
    env.append_transform(RewardSum(in_keys=["reward"], out_keys=["episode_reward"]))
    if seed is not None:
        env.set_seed(seed)
    return env


def _agent_net(
    agent_cfg: Mapping, dims: EnvDims, device, features: bool = False, iqn: Mapping | None = None
):
    """The agent network of ``agent_cfg`` (``type``: ``mlp`` or ``gru``); ``features`` also
    writes the per-agent features (GRU output or last hidden layer) at :data:`FEATURES_KEY`;
    ``iqn`` (``n_cos``, ``n_acting``) makes them IQN agents with the same trunk."""
    kind = agent_cfg.get("type", "mlp")
    if kind not in ("mlp", "gru"):
        raise ValueError(f"unknown agent type {kind!r}; choose 'mlp' or 'gru'")
    common = {
        "obs_dim": dims.obs_dim,
        "n_actions": dims.n_actions,
        "n_agents": dims.n_agents,
        "agent_id": bool(agent_cfg.get("agent_id", True)),
        "device": device,
    }
    if kind == "gru":
        common["hidden_dim"] = int(agent_cfg.get("hidden_dim", 64))
        common["last_action"] = bool(agent_cfg.get("last_action", True))
        if iqn is not None:
            return MultiAgentIQN(**common, **iqn)
        return MultiAgentGRU(**common, features_key=FEATURES_KEY if features else None)
    common["hidden"] = tuple(int(width) for width in agent_cfg.get("hidden", (64,)))
    if iqn is not None:
        return IQNAgentMLP(**common, **iqn)
    return make_agent_qnet(**common, features_key=FEATURES_KEY if features else None)


def _monotonic_mixer(algo: Mapping, dims: EnvDims, device):
    kind = algo.get("mixer", "qmix")
    if kind == "qmix":
        return QMixer(
            n_agents=dims.n_agents,
            state_dim=dims.state_dim,
            mixing_embed_dim=int(algo.get("mixing_embed_dim", 32)),
            hypernet_embed=int(algo.get("hypernet_embed", 64)),
            hypernet_layers=int(algo.get("hypernet_layers", 2)),
            device=device,
        )
    if kind == "vdn":
        return VDNMixer(n_agents=dims.n_agents, device=device)
    if kind == "qatten":
        unit_dim = algo.get("unit_dim")
        return QattenMixer(
            n_agents=dims.n_agents,
            state_dim=dims.state_dim,
            n_heads=int(algo.get("n_heads", 4)),
            embed_dim=int(algo.get("mixing_embed_dim", 32)),
            hypernet_embed=int(algo.get("hypernet_embed", 64)),
            unit_dim=None if unit_dim is None else int(unit_dim),
            device=device,
        )
    raise ValueError(f"unknown mixer {kind!r}; choose 'qmix', 'qatten' or 'vdn'")


def _build_vdn(algo, agent_cfg, dims, device) -> LossModule:
    return VDNLoss(
        _agent_net(agent_cfg, dims, device), n_agents=dims.n_agents, gamma=algo.get("gamma", 0.99)
    )


def _build_qmix(algo, agent_cfg, dims, device) -> LossModule:
    return QMIXLoss(
        _agent_net(agent_cfg, dims, device),
        _monotonic_mixer(algo, dims, device),
        gamma=algo.get("gamma", 0.99),
    )


def _feedforward_mixer(algo, dims: EnvDims, device) -> FeedForwardMixer:
    """Unconstrained mixer of the central ``Q*`` (and of ResQ's residual ``R``)."""
    embed = int(algo.get("central_mixer_embed", 128))
    layers = int(algo.get("central_mixer_layers", 2))  # the reference code's: 3
    return FeedForwardMixer(
        dims.n_agents, dims.state_dim, embed_dim=embed, device=device, hidden_layers=layers
    )


def _build_resq(algo, agent_cfg, dims, device) -> LossModule:
    return ResQLoss(
        _agent_net(agent_cfg, dims, device),
        _monotonic_mixer(algo, dims, device),
        residual_mixer=_feedforward_mixer(algo, dims, device),
        central_mixer=_feedforward_mixer(algo, dims, device),
        residual_agent_network=_agent_net(agent_cfg, dims, device),
        central_agent_network=_agent_net(agent_cfg, dims, device),
        residual_sign=algo.get("residual_sign", "abs"),
        central_loss_coef=float(algo.get("central_loss_coef", 1.0)),
        residual_sign_coef=float(algo.get("residual_sign_coef", 1.0)),
        tot_weighting=algo.get("tot_weighting", "none"),
        tot_weight_alpha=float(algo.get("tot_weight_alpha", 0.1)),
        gamma=algo.get("gamma", 0.99),
    )


def _build_wqmix(weighting: str):
    def build(algo, agent_cfg, dims, device) -> LossModule:
        return WeightedQMIXLoss(
            _agent_net(agent_cfg, dims, device),
            _monotonic_mixer(algo, dims, device),
            central_mixer=_feedforward_mixer(algo, dims, device),
            central_agent_network=_agent_net(agent_cfg, dims, device),
            weighting=weighting,
            alpha=float(algo.get("alpha", 0.1)),
            central_loss_coef=float(algo.get("central_loss_coef", 1.0)),
            gamma=algo.get("gamma", 0.99),
        )

    return build


def _build_qtran(algo, agent_cfg, dims, device) -> LossModule:
    agents = _agent_net(agent_cfg, dims, device, features=True)
    feature_dim = (
        agents.feature_dim if isinstance(agents, MultiAgentGRU) else agents.module.feature_dim
    )
    joint = QTranJointNetwork(
        dims.n_agents,
        dims.n_actions,
        feature_dim,
        dims.state_dim,
        embed_dim=int(algo.get("mixing_embed_dim", 64)),
        device=device,
    )
    return QTRANLoss(
        agents,
        joint,
        opt_coef=float(algo.get("opt_coef", 1.0)),
        nopt_coef=float(algo.get("nopt_coef", 0.1)),
        gamma=algo.get("gamma", 0.99),
    )


def _build_qplex(algo, agent_cfg, dims, device) -> LossModule:
    mixer = QPLEXMixer(
        dims.n_agents,
        dims.n_actions,
        dims.state_dim,
        hypernet_embed=int(algo.get("hypernet_embed", 64)),
        n_kernels=int(algo.get("n_kernels", 10)),
        adv_hypernet_layers=int(algo.get("adv_hypernet_layers", 3)),
        adv_hypernet_embed=int(algo.get("adv_hypernet_embed", 64)),
        device=device,
    )
    return QPLEXLoss(_agent_net(agent_cfg, dims, device), mixer, gamma=algo.get("gamma", 0.99))


def _iqn_agent_net(algo: Mapping, agent_cfg: Mapping, dims: EnvDims, device):
    """IQN agents with ``algo``'s cosine features and acting fractions."""
    iqn = {"n_cos": int(algo.get("n_cos", 64)), "n_acting": int(algo.get("n_acting_quantiles", 32))}
    return _agent_net(agent_cfg, dims, device, iqn=iqn)


def _quantile_kwargs(algo: Mapping) -> dict:
    return {
        "n_quantiles": int(algo.get("n_quantiles", 8)),
        "n_target_quantiles": int(algo.get("n_target_quantiles", 8)),
        "kappa": float(algo.get("kappa", 1.0)),
        "gamma": algo.get("gamma", 0.99),
    }


def _distributional_mixer(algo: Mapping, dims: EnvDims, device):
    """Main distributional mixer: ``dmix`` (QMIX over means + shapes), ``ddn`` (sum) or
    ``qatten`` (Qatten per fraction)."""
    kind = algo.get("mixer", "dmix")
    if kind == "dmix":
        return DMIXMixer(_monotonic_mixer(dict(algo, mixer="qmix"), dims, device))
    if kind in ("ddn", "vdn"):
        return QuantileMixer(VDNMixer(n_agents=dims.n_agents, device=device))
    if kind == "qatten":
        return QuantileMixer(_monotonic_mixer(algo, dims, device))
    raise ValueError(f"unknown distributional mixer {kind!r}; choose 'dmix', 'ddn' or 'qatten'")


def _build_ddn(algo, agent_cfg, dims, device) -> LossModule:
    agents = _iqn_agent_net(algo, agent_cfg, dims, device)
    return DDNLoss(agents, n_agents=dims.n_agents, **_quantile_kwargs(algo))


def _build_dmix(algo, agent_cfg, dims, device) -> LossModule:
    mixer = DMIXMixer(_monotonic_mixer(dict(algo, mixer="qmix"), dims, device))
    return DMIXLoss(_iqn_agent_net(algo, agent_cfg, dims, device), mixer, **_quantile_kwargs(algo))


def _build_resz(algo, agent_cfg, dims, device) -> LossModule:
    return ResZLoss(
        _iqn_agent_net(algo, agent_cfg, dims, device),
        _distributional_mixer(algo, dims, device),
        residual_mixer=QuantileMixer(_feedforward_mixer(algo, dims, device)),
        central_mixer=QuantileMixer(_feedforward_mixer(algo, dims, device)),
        residual_agent_network=_iqn_agent_net(algo, agent_cfg, dims, device),
        central_agent_network=_iqn_agent_net(algo, agent_cfg, dims, device),
        central_loss_coef=float(algo.get("central_loss_coef", 1.0)),
        **_quantile_kwargs(algo),
    )


LOSS_BUILDERS: dict[str, Callable[..., LossModule]] = {
    "vdn": _build_vdn,
    "qmix": _build_qmix,
    "resq": _build_resq,
    "cw_qmix": _build_wqmix("cw"),
    "ow_qmix": _build_wqmix("ow"),
    "qtran": _build_qtran,
    "qplex": _build_qplex,
    "resz": _build_resz,
    "ddn": _build_ddn,
    "dmix": _build_dmix,
}


#: the algorithm settings that are a count of units, layers, fractions or kernels (>= 1 each)
ALGORITHM_SIZES = (
    "adv_hypernet_layers",
    "mixing_embed_dim",
    "hypernet_embed",
    "central_mixer_embed",
    "central_mixer_layers",
    "adv_hypernet_embed",
    "n_kernels",
    "n_quantiles",
    "n_target_quantiles",
    "n_acting_quantiles",
    "n_cos",
)


def _whole(key: str, value, low: int) -> None:
    """A whole number >= ``low``; a whole float (``1e2``) passes, as in ``cli.check_type``."""
    if not is_whole(value) or value < low:
        raise ConfigError(f"{key} must be a whole number >= {low}, got {value!r}")


def check_network_sizes(algo: Mapping, agent_cfg: Mapping) -> None:
    """Raise a one-line :class:`ConfigError` for a network width, layer count, layer list or
    quantile count that cannot build the networks (``agent.hidden=[0]`` built a layer of no
    units that trained in silence; a negative one ended in a traceback), and for
    ``td_lambda`` outside [0, 1]."""
    for key in ALGORITHM_SIZES:
        if algo.get(key) is not None:
            _whole(f"algorithm.{key}", algo[key], 1)
    layers = algo.get("hypernet_layers")
    if layers is not None and (isinstance(layers, bool) or layers not in (1, 2)):
        raise ConfigError(f"algorithm.hypernet_layers must be 1 or 2, got {layers!r}")
    lam = algo.get("td_lambda")
    if lam is not None:
        try:
            ok = not isinstance(lam, bool) and 0 <= float(lam) <= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"algorithm.td_lambda must lie in [0, 1], got {lam!r}")
    if agent_cfg.get("hidden_dim") is not None:
        _whole("agent.hidden_dim", agent_cfg["hidden_dim"], 1)
    hidden = agent_cfg.get("hidden")
    if hidden is not None:
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ConfigError(
                f"agent.hidden must be a list of layer widths such as [64] or [256, 256], "
                f"got {hidden!r}"
            )
        for i, width in enumerate(hidden):
            _whole(f"agent.hidden[{i}]", width, 1)


def env_family(env_cfg: Mapping) -> str:
    """The builder an env config asks for: its ``family`` (``env=predator_prey_small``:
    ``predator_prey``), else its ``name``."""
    return str(env_cfg.get("family", env_cfg.get("name")))


def make_loss(
    algo: Mapping, agent_cfg: Mapping, dims: EnvDims, device: torch.device | str = "cpu"
) -> LossModule:
    """The loss named ``algo["name"]`` with freshly initialised networks on ``device``
    (sizes checked first, :func:`check_network_sizes`)."""
    name = algo.get("name")
    if name not in LOSS_BUILDERS:
        raise ConfigError(f"unknown algorithm {name!r}; available: {sorted(LOSS_BUILDERS)}")
    check_network_sizes(algo, agent_cfg)
    return LOSS_BUILDERS[name](algo, agent_cfg, dims, device)


def make_optimizer(
    loss: LossModule, name: str, lr: float, eps: float = 1e-5, flat: bool = False
) -> torch.optim.Optimizer:
    """``rmsprop`` (pymarl settings: alpha 0.99) or ``adam``, both with ``eps`` (default 1e-5,
    pymarl's; larger than Adam's usual 1e-8, it bounds the steps once gradients vanish).

    ``flat=True``: the optimizer steps one flat parameter of which every parameter of
    ``loss`` is a view (:func:`flatten_parameters`); same values, step for step, for a
    fraction of the time when the parameters are many small tensors (the matrix game).
    Its ``zero_grad`` zeroes the flat gradient in place. Its state is not interchangeable
    with a per-parameter optimizer's, so checkpointed training keeps ``flat=False``."""
    return optimizer_over(list(loss.parameters()), name, lr, eps, flat)


def optimizer_over(
    params: list[torch.Tensor], name: str, lr: float, eps: float = 1e-5, flat: bool = False
) -> torch.optim.Optimizer:
    """:func:`make_optimizer` over given parameter tensors (the vectorised matrix-game
    trainer's stacked ones)."""
    if name not in ("rmsprop", "adam"):
        raise ValueError(f"unknown optimizer {name!r}; choose 'rmsprop' or 'adam'")
    if flat:
        params = [flatten_parameters(params)]
    # one multi-tensor update instead of a Python loop over the parameters: torch only
    # picks it by itself on CUDA, and on the CPU it saved ~12% of a matrix-game update
    if name == "rmsprop":
        optimizer = torch.optim.RMSprop(params, lr=lr, alpha=0.99, eps=eps, foreach=True)
    elif flat:
        optimizer = FlatAdam(params, lr=lr, eps=eps, foreach=True)
    else:
        optimizer = torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)
    if flat:
        # set_to_none would drop the flat gradient that every parameter's .grad views
        optimizer.zero_grad = functools.partial(optimizer.zero_grad, set_to_none=False)
    return optimizer


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam(foreach=True)``, step for step the same numbers, over the flat
    parameter of :func:`flatten_parameters`, without ``sqrt`` of exact zeros.

    Why by hand: on the project's AMD EPYC CPU, ``torch.sqrt`` of an exact 0 costs about
    ten times a positive number (2.7M zeros: 13-17 ms against 1.9 ms for ones, into the same
    buffer). Adam takes the square root of its second moment ``v`` every step, and in the
    matrix game ``v`` stays exactly 0 for about 60% of the parameters (a constant input
    leaves a ReLU unit dead for every sample, so its weights never get a gradient). A step
    over ResQ's 43k parameters took 330 us with torch's Adam and 150 us here, over QPLEX's
    2.7M vectorised ones 18 ms and 7.5 ms. Here ``v`` is clamped to the smallest
    normal number first. Where ``v = 0`` Adam's denominator ``sqrt(v) / sqrt(1 - beta2^t) +
    eps`` is ``eps``; with the clamp it is ``eps`` plus at most ``1.1e-19 / sqrt(1 - beta2)``,
    far below half a unit in the last place of ``eps``, so it rounds to ``eps`` again: the
    same bits (``tests/test_fast_unroll.py`` compares with torch's Adam). Every other
    operation is the one torch's multi-tensor Adam runs on the CPU (whose ``_foreach_*`` ops
    loop over the tensors with the per-tensor ops used here). Options beyond ``lr``,
    ``betas`` and ``eps``, a closure, parameters off the CPU, or an ``eps`` too small for
    the argument above take torch's own step.
    """

    def _plain(self) -> bool:
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["weight_decay"] != 0:
                return False
            if group["capturable"] or group["differentiable"] or group.get("fused"):
                return False
            if any(isinstance(x, torch.Tensor) for x in (group["lr"], *group["betas"])):
                return False
            for p in group["params"]:
                # the slow sqrt is the CPU's; elsewhere torch's fused multi-tensor kernels
                # may round differently from per-tensor ops, so they keep torch's step
                if p.device.type != "cpu" or p.is_complex() or p.grad is None or p.grad.is_sparse:
                    return False
                # the clamp's share of the denominator must round away (see above)
                share = torch.finfo(p.dtype).tiny ** 0.5 / (1 - group["betas"][1]) ** 0.5
                if not share < group["eps"] * torch.finfo(p.dtype).eps / 4:
                    return False
        return True

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not self._plain():
            return super().step(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                state = self.state[p]
                if not state:  # as torch's Adam initialises it
                    double = torch.get_default_dtype() == torch.float64
                    state["step"] = torch.tensor(
                        0.0, dtype=torch.float64 if double else torch.float32
                    )
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step_t, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
                step_t.add_(torch.tensor(1.0), alpha=1.0)
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2)
                exp_avg_sq.addcmul_(p.grad, p.grad, value=1 - beta2)
                step = step_t.item()
                step_size = (lr / (1 - beta1**step)) * -1
                denom = exp_avg_sq.clamp_min(torch.finfo(p.dtype).tiny).sqrt_()
                denom.div_((1 - beta2**step) ** 0.5)
                denom.add_(eps)
                p.addcdiv_(exp_avg, denom, value=step_size)
        return None


def flatten_parameters(params: list[torch.nn.Parameter]) -> torch.nn.Parameter:
    """Re-home ``params`` as views of one flat parameter, and their gradients as views of
    its gradient; returns the flat parameter (its ``.grad`` set).

    Why: on the CPU torch's optimizers, even multi-tensor (``foreach``) ones, run one
    kernel per tensor per operation, so Adam over ResQ's 46 small matrix-game tensors took
    1.3 ms of a 6 ms update. On one tensor it runs the same element-wise arithmetic once.
    Backward accumulates into the existing ``.grad`` views in place (0 + g is exactly g),
    and gradient clipping, which reads the per-parameter views, is unchanged; so training
    gives the same numbers (``tests/test_fast_unroll.py`` checks it bit for bit). Keep the
    flat gradient: zero it in place, never set it to ``None``. Two differences from
    per-parameter optimizers: a parameter that gets no gradient gets zeros (Adam then still
    moves it on its momentum; every loss here gives each parameter a gradient), and moving
    the module (``.to()``, ``.double()``) after this gives it new tensors the optimizer no
    longer steps: move first, then build the optimizer.
    """
    if not params:
        raise ValueError("flatten_parameters got no parameters")
    kinds = {(p.dtype, p.device) for p in params}
    if len(kinds) > 1:
        found = sorted(map(str, kinds))
        raise ValueError(f"flatten_parameters needs one dtype and device, got {found}")
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = grad[offset : offset + n].view_as(p)
        offset += n
    out = torch.nn.Parameter(flat)
    out.grad = grad
    return out


def make_target_updater(loss: LossModule, interval: int = 0, tau: float = 0.0) -> TargetNetUpdater:
    """torchrl's ``HardUpdate`` copying on every ``interval``-th call to ``step()`` (the 1st
    copy on call ``interval``), or ``SoftUpdate(tau)`` when ``tau > 0``."""
    if tau > 0:
        return SoftUpdate(loss, tau=tau)
    if interval < 1:
        raise ValueError(f"target update interval must be >= 1, got {interval}")
    # HardUpdate copies when its counter, starting at 0, equals the given value, then resets.
    return HardUpdate(loss, value_network_update_interval=interval - 1)


def total_loss(losses: TensorDictBase) -> torch.Tensor:
    """Sum of the ``loss_*`` entries of a loss output."""
    terms = [v for k, v in losses.items() if k.startswith("loss_")]
    if not terms:
        raise ValueError(f"loss output has no loss_* entry: {list(losses.keys())}")
    return torch.stack(terms).sum()


def gradient_step(
    loss: LossModule,
    optimizer: torch.optim.Optimizer,
    batch: TensorDictBase,
    grad_clip: float,
    buffer=None,
) -> tuple[TensorDictBase, torch.Tensor]:
    """One update, the same in every training loop: loss on ``batch``, backward, gradient
    clipping at ``grad_clip``, optimizer step, then the replay's priorities from the TD
    errors the loss wrote into ``batch`` (``buffer``, when given; after the step, so an
    update stopped before its step changes nothing in the replay either).

    Returns the loss output (detached) and the gradient norm before clipping.
    """
    losses = loss(batch)
    optimizer.zero_grad()
    total_loss(losses).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(loss.parameters(), grad_clip)
    optimizer.step()
    if buffer is not None:
        buffer.update_priority(batch)
    return losses.detach(), grad_norm
