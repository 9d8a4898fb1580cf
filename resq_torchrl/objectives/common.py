"""Machinery shared by every value-factorization loss, written once.

* :func:`gather_chosen` - per-agent utility of the taken action.
* :func:`masked_greedy` - per-agent greedy action among available actions.
* :func:`is_greedy_joint_action` - whether a joint action is the agents' greedy tuple.
* :func:`masked_mean` - mean over real (non-padded) samples.
* :class:`ValueFactorizationLoss` - the ``LossModule`` base: accepted keys, functional
  networks with optional target parameters, running a network with online or target
  parameters, mixing, input validation and the bootstrapped target.

torchrl provides the TD(0) and TD(lambda) returns (``td0_return_estimate``,
``vec_td_lambda_return_estimate``) that we call; what it does not provide is a double-Q
bootstrap that evaluates one network (the target) at the greedy action of another (the
online agents) across several mixers, so that part is written here, and
``make_value_estimator`` selects the return rather than building a torchrl estimator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torchrl.modules import set_recurrent_mode
from torchrl.modules.models.multiagent import Mixer
from torchrl.objectives.common import LossModule
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value.functional import (
    td0_return_estimate,
    vec_td_lambda_return_estimate,
)

from resq_torchrl.modules.rnn import clear_shared_inputs, packing_pays

__all__ = [
    "gather_chosen",
    "masked_greedy",
    "is_greedy_joint_action",
    "masked_mean",
    "ValueFactorizationLoss",
]


def gather_chosen(
    action_value: torch.Tensor, action: torch.Tensor, check: bool = True
) -> torch.Tensor:
    """Utility of the taken action.

    Args:
        action_value: ``[*B, N, A]`` per-agent utilities.
        action: ``[*B, N]`` integer actions (a trailing singleton dim is accepted).
        check: verify that every action lies in ``[0, A)`` and, for float actions, has no
            fraction (one device sync, two for float actions); the losses
            check the taken actions once per call and skip it for the other gathers.

    Returns:
        ``[*B, N, 1]``.
    """
    if action.shape == action_value.shape and action_value.shape[-1] > 1:
        raise ValueError(
            f"action of shape {tuple(action.shape)} has the shape of the action values: "
            "one-hot actions? the losses take action indices [*B, N] (action.argmax(-1))"
        )
    if action.shape == action_value.shape[:-1]:
        action = action.unsqueeze(-1)
    if action.shape != (*action_value.shape[:-1], 1):
        raise ValueError(
            f"action of shape {tuple(action.shape)} does not match action values of shape "
            f"{tuple(action_value.shape)} (expected [*B, N] actions for [*B, N, A] values)"
        )
    n_actions = action_value.shape[-1]
    if check and not _transformed():
        if ((action < 0) | (action >= n_actions)).any():
            raise ValueError(
                f"actions must lie in [0, {n_actions}), got values in "
                f"[{float(action.min()):g}, {float(action.max()):g}]"
            )
        if action.is_floating_point() and (action != action.round()).any():
            raise ValueError(
                f"actions must be whole action indices, got {action.dtype} values with a "
                "fraction (they would be truncated)"
            )
    return action_value.gather(-1, action.long())


def masked_greedy(
    action_value: torch.Tensor,
    action_mask: torch.Tensor | None = None,
    ignore: torch.Tensor | None = None,
    name: str = "action_mask",
) -> torch.Tensor:
    """Per-agent greedy action among the available ones.

    Args:
        action_value: ``[*B, N, A]``.
        action_mask: ``[*B, N, A]`` bool, ``True`` where the action is available; ``None``
            means every action is available.
        ignore: ``[*B]`` or ``[*B, 1]`` bool marking samples whose mask is not checked
            (padding, or next states after termination, whose values are never used).
        name: how the error names the mask (the losses name the next step's).

    Returns:
        ``[*B, N]`` int64 actions; an unavailable action is never returned for a checked
        sample.

    Raises:
        ValueError: when a checked agent has no available action.
    """
    if action_mask is None:
        return action_value.argmax(-1)
    if action_mask.shape != action_value.shape:
        raise ValueError(
            f"action_mask of shape {tuple(action_mask.shape)} does not match action values of "
            f"shape {tuple(action_value.shape)}"
        )
    action_mask = action_mask.bool()
    empty = ~action_mask.any(-1)  # [*B, N]
    if ignore is not None:
        ignore = ignore.reshape(*empty.shape[:-1], 1).bool()
        empty = empty & ~ignore
    if not _transformed() and empty.any():
        where = empty.nonzero()[0].tolist()
        raise ValueError(
            f"{name} has an agent with no available action (first at batch index "
            f"{where[:-1]}, agent {where[-1]}); every agent needs at least one available action"
        )
    lowest = torch.finfo(action_value.dtype).min
    return action_value.masked_fill(~action_mask, lowest).argmax(-1)


def is_greedy_joint_action(action: torch.Tensor, greedy_action: torch.Tensor) -> torch.Tensor:
    """``[*B, N]`` x ``[*B, N]`` -> ``[*B, 1]`` bool: every agent took its greedy action."""
    return (action.reshape(greedy_action.shape) == greedy_action).all(-1, keepdim=True)


def _transformed() -> bool:
    """Inside a ``torch.func`` transform (``vmap``, ``grad``): the data checks, which need
    a host sync on concrete values, are skipped there; validate the data before."""
    return torch._C._are_functorch_transforms_active()


def _storage(tensors) -> tuple:
    """What a module must hold to compute with ``tensors``: their memory, shape and dtype,
    in order (in-place updates keep it; loading into new tensors or a move changes it)."""
    return tuple((x.data_ptr(), x.shape, x.dtype, x.device) for x in tensors)


def _module_leaves(module: nn.Module) -> tuple:
    """The tensors of ``module`` in the order of ``TensorDict.from_module`` (the order of
    the parameter TensorDicts of ``convert_to_functional``)."""
    return tuple(TensorDict.from_module(module).values(include_nested=True, leaves_only=True))


def _tree_edges(params: TensorDictBase) -> tuple | None:
    """``(dict, key, value)`` for every entry of ``params``' tree: what holds each nested
    TensorDict and each leaf, to check cheaply (a few µs, against about 40 µs to read the
    leaves of a ``TensorDictParams``) that none was replaced since (``params.update(...)``,
    ``params.set(...)`` put new tensors in the tree and leave the old ones untouched).
    ``None`` when a node is not a plain ``TensorDict`` (then the leaves are read instead).
    Reads tensordict's ``_tensordict`` mapping: written by hand, tensordict has no public
    change counter."""
    edges = []
    stack = [getattr(params, "_param_td", params)]
    while stack:
        td = stack.pop()
        entries = getattr(td, "_tensordict", None)
        if not isinstance(entries, dict):
            return None
        for key, value in entries.items():
            edges.append((entries, key, value))
            if isinstance(value, TensorDictBase):
                stack.append(value)
    return tuple(edges)


def _module_edges(module: nn.Module) -> tuple:
    """``(dict, name, tensor)`` for every parameter and buffer slot of ``module`` and its
    submodules: a tensor swapped into the module itself (``params.to_module(module)``,
    ``setattr``) shows as a changed entry."""
    return tuple(
        (slots, key, value)
        for sub in module.modules()
        for slots in (sub._parameters, sub._buffers)
        for key, value in slots.items()
    )


def _unchanged(edges: tuple) -> bool:
    """Does every ``(dict, key, value)`` of :func:`_tree_edges` or :func:`_module_edges`
    still hold its value?"""
    return all(entries.get(key) is value for entries, key, value in edges)


def _same_tree(edges: tuple | None, params: TensorDictBase, leaves: tuple) -> bool:
    """Does ``params`` still hold the entries recorded by :func:`_tree_edges`?"""
    if params is None:  # nothing registered: nothing to compute with
        return not leaves
    if edges is None:  # compared by memory: a getter may wrap the same tensors anew
        found = tuple(params.values(include_nested=True, leaves_only=True))
        return _storage(found) == _storage(leaves)
    return _unchanged(edges)


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``a`` and ``b`` are one device (``cuda`` without an index is the current one, which
    may be ``cuda:0``)."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class _Binding(NamedTuple):
    """A module bound to parameters by :meth:`ValueFactorizationLoss._bound`, with what
    tells whether it still is: the leaves' memory, the registered parameter TensorDict, its
    tree's entries and the module's parameter slots."""

    signature: tuple
    leaves: tuple
    module: nn.Module
    params: TensorDictBase | None
    tree: tuple | None
    slots: tuple


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` ``[*B, 1]`` over samples where ``mask`` (``[*B]`` or ``[*B, 1]``) holds."""
    if mask is None:
        return x.mean()
    mask = mask.reshape(x.shape).to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


class ValueFactorizationLoss(LossModule):
    """Base of every value-factorization loss (VDN, QMIX, ResQ, ...).

    Subclasses register their networks with :meth:`_register_agent_network` and
    :meth:`_register_mixer`, implement :meth:`joint_q` (the joint values of the taken actions,
    with gradient) and :meth:`forward`. This class owns the data vocabulary, input
    validation, running networks with online or target parameters, and the double-Q target.

    Data (``*B`` is any batch shape; ``N`` agents, ``A`` actions, ``S`` state features):
        ``tensor_keys.action`` ``[*B, N]``, ``tensor_keys.action_mask`` ``[*B, N, A]``
        (optional), ``tensor_keys.state`` ``[*B, S]`` (only where a mixer reads it: not for
        VDN's and DDN's sums), the agent networks' inputs, and under
        ``"next"``: the same observations/state/mask plus ``reward`` ``[*B, 1]``,
        ``terminated`` and ``done`` ``[*B, 1]``. ``tensor_keys.padding_mask``
        (``("collector", "mask")``) marks real samples when present.
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read or written by the loss; change them with ``set_keys``.

        Attributes:
            action: per-agent taken actions ``[*B, N]``. Default ``("agents", "action")``.
            action_value: where agent networks write utilities ``[*B, N, A]``.
                Default ``("agents", "action_value")``.
            action_mask: available actions ``[*B, N, A]``; optional in the data.
                Default ``("agents", "action_mask")``.
            state: global state ``[*B, S]`` fed to the mixers (unread, and not required, when
                no mixer needs it: VDN, DDN). Default ``"state"``.
            reward: team reward ``[*B, 1]`` (read under ``"next"``). Default ``"reward"``.
            done: episode end ``[*B, 1]`` (read under ``"next"``). Default ``"done"``.
            terminated: true termination ``[*B, 1]``; targets do not bootstrap through it.
                Default ``"terminated"``.
            padding_mask: real-sample mask ``[*B]``; optional. Default ``("collector", "mask")``.
            sample_weight: importance weights of the samples, ``[B]`` over the leading batch
                dimension (torchrl's prioritized samplers write them); optional: the means
                over samples become ``sum w x / sum w``. Default ``"_weight"``.
            priority: written back with the per-sample absolute TD error ``[*B, 1]``.
                Default ``"td_error"``.
        """

        action: NestedKey = ("agents", "action")
        action_value: NestedKey = ("agents", "action_value")
        action_mask: NestedKey = ("agents", "action_mask")
        state: NestedKey = "state"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        padding_mask: NestedKey = ("collector", "mask")
        sample_weight: NestedKey = "_weight"
        priority: NestedKey = "td_error"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    #: let a recurrent agent network that offers ``forward_with_next`` compute the current
    #: and the next-step values in one unroll, and ``forward_current`` the current ones from
    #: the same shared inputs, both over the real steps only; ``False`` forces the plain
    #: passes over every step (the reference of the equivalence tests)
    fast_unroll: bool = True
    #: with ``fast_unroll``, compute only the real steps of whole padded episodes (packed
    #: sequences): a batch of short episodes padded to its longest one costs what its real
    #: steps cost; ``False``: every step (the same values at the real steps)
    pack_padding: bool = True
    #: run a feed-forward agent network that is a plain ``TensorDictModule`` (one input, the
    #: utilities as its only output) on its input tensor directly, without TensorDict
    #: copies and module dispatch: the same module call, a third of a matrix-game update
    #: less overhead; ``False`` takes the TensorDict path (the equivalence tests' reference)
    direct_feedforward: bool = True
    #: every transition of the data ends its episode (a one-step game, such as the matrix
    #: game): the targets are the rewards, so the next-state passes (the online agents'
    #: greedy next action, the target networks at ``s'``) are skipped. The random draws they
    #: make (the distributional losses' target fractions) are still made, and a skipped
    #: bootstrap is 0 where it was multiplied by 0, so training is bit for bit the same
    #: (for finite values). The data must say so: outside ``torch.func`` transforms a sample
    #: that does not terminate raises. ``False`` (default): every pass runs.
    one_step: bool = False
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TDLambda)

    def __init__(self, *, gamma: float = 0.99) -> None:
        super().__init__()
        self._agent_network_names: list[str] = []
        self._mixer_names: list[str] = []
        self.make_value_estimator(self.default_value_estimator, gamma=gamma)

    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams):
        """Choose the bootstrapped return: ``ValueEstimators.TD0`` (default) or
        ``ValueEstimators.TDLambda`` (keyword ``lmbda``, 0.6 unless given, at every call);
        both take ``gamma`` (unless given, the loss's, as built).

        TD(lambda) needs ``[B, T]`` sequences (time is the last batch dimension); on data
        without a time dimension it reduces to TD(0).
        """
        value_type = self.default_value_estimator if value_type is None else value_type
        if value_type not in self.SUPPORTED_VALUE_ESTIMATORS:
            raise NotImplementedError(
                f"{type(self).__name__} supports {self.SUPPORTED_VALUE_ESTIMATORS}, "
                f"got {value_type}"
            )
        gamma = float(hyperparams.pop("gamma", getattr(self, "gamma", 0.99)))
        lmbda = float(hyperparams.pop("lmbda", 0.6))
        if hyperparams:
            raise TypeError(f"unexpected value-estimator arguments {sorted(hyperparams)}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma}")
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must lie in [0, 1], got {lmbda}")
        self.value_type, self.gamma, self.lmbda = value_type, gamma, lmbda
        return self

    # ----------------------------------------------------------------- registration
    def _register_agent_network(
        self, name: str, network: TensorDictModuleBase, *, target: bool
    ) -> None:
        """Store ``network`` functionally as ``self.<name>`` with ``self.<name>_params`` and,
        when ``target``, a detached copy ``self.target_<name>_params``."""
        if not isinstance(network, TensorDictModuleBase):
            raise TypeError(
                f"{name} must be a TensorDict module writing {self.tensor_keys.action_value!r}, "
                f"got {type(network).__name__}"
            )
        self.convert_to_functional(network, name, create_target_params=target)
        self._agent_network_names.append(name)

    def _register_mixer(
        self, name: str, mixer: nn.Module, *, target: bool, expected: type | None = None
    ) -> None:
        """Store a torchrl :class:`Mixer` (or a ``TensorDictModule`` wrapping one).

        ``expected`` replaces ``Mixer`` for losses whose joint network takes other inputs
        than ``[*B, N, 1]`` utilities and a state (QTRAN, QPLEX); those losses call it
        themselves rather than through :meth:`_mix`.
        """
        if isinstance(mixer, TensorDictModule):
            mixer = mixer.module
        expected = Mixer if expected is None else expected
        if not isinstance(mixer, expected):
            raise TypeError(
                f"{name} must be a {expected.__name__} (or a TensorDictModule wrapping one), "
                f"got {type(mixer).__name__}"
            )
        self.convert_to_functional(mixer, name, create_target_params=target)
        self._mixer_names.append(name)

    # ----------------------------------------------------------------- validation
    def set_keys(self, **kwargs) -> None:
        """torchrl's ``set_keys``, checked first: an unknown name is one line listing the
        loss's keys (torchrl's message lists the dataclass's fields, thousands of characters),
        and ``action_value`` must be a key every agent network writes (it failed at the next
        call with ``'NoneType' object has no attribute 'shape'``)."""
        accepted = list(self._AcceptedKeys.__dataclass_fields__)
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}.set_keys: {unknown[0]!r} is not one of its keys: "
                f"{', '.join(accepted)} (an agent network's inputs, its observation among "
                "them, are that network's in_keys, set where it is built)"
            )
        if kwargs.get("action_value") is not None:
            key = unravel_key(kwargs["action_value"])
            for name in self._agent_network_names:
                written = [unravel_key(k) for k in getattr(self, name).out_keys]
                if key not in written:
                    raise ValueError(
                        f"{type(self).__name__}.set_keys: action_value={key!r} is not written "
                        f"by {name} (its out_keys: {written})"
                    )
        super().set_keys(**kwargs)

    @property
    def out_keys(self) -> list[str]:
        """The loss terms :meth:`forward` writes (``loss_*``, which ``total_loss`` sums),
        as torchrl's losses list theirs; diagnostics (``td_error``, ``*_mean``) come beside
        them."""
        return ["loss_td", *self._extra_losses()]

    def _extra_losses(self) -> list[str]:
        """The loss terms beside ``loss_td`` (:attr:`out_keys`)."""
        return []

    @property
    def in_keys(self) -> list[NestedKey]:
        # read at every call (torchrl's dispatch, the input check): computed once per
        # set of accepted keys, a tenth of a matrix-game update otherwise
        signature = tuple(sorted((k, str(v)) for k, v in vars(self.tensor_keys).items()))
        cached = self.__dict__.get("_in_keys_cache")
        if cached is not None and cached[0] == signature:
            return list(cached[1])
        keys = self._required_keys()
        self.__dict__["_in_keys_cache"] = (signature, keys)
        return list(keys)

    def _required_keys(self) -> list[NestedKey]:
        """What :attr:`in_keys` lists: the accepted keys and the agent networks' inputs, at
        the root and under ``"next"`` (optional network inputs left out)."""
        keys = {self.tensor_keys.action}
        if self._needs_state():
            keys |= {self.tensor_keys.state, ("next", self.tensor_keys.state)}
        for k in (self.tensor_keys.reward, self.tensor_keys.done, self.tensor_keys.terminated):
            keys.add(("next", k))
        for name in self._agent_network_names:
            network = getattr(self, name)
            # e.g. a recurrent state that starts at zero when absent
            optional = {unravel_key(k) for k in getattr(network, "optional_in_keys", ())}
            for k in network.in_keys:
                if unravel_key(k) not in optional:
                    keys |= {k, ("next", k)}
        return sorted({unravel_key(k) for k in keys}, key=str)

    def _needs_state(self) -> bool:
        """Whether a mixer of the loss reads the global state (VDN's and DDN's sums do not:
        their data need no ``state`` key)."""
        return any(getattr(getattr(self, n), "needs_state", True) for n in self._mixer_names)

    def _state(self, tensordict: TensorDictBase, key: NestedKey | None = None):
        """The global state ``[*B, S]`` at ``key`` (default ``tensor_keys.state``), or
        ``None`` when it is absent and no mixer reads it."""
        key = self.tensor_keys.state if key is None else key
        return tensordict.get(key) if self._needs_state() else tensordict.get(key, None)

    def _check_input(self, tensordict: TensorDictBase) -> None:
        """Raise a ``KeyError`` naming the first required key missing from the input (a
        ``RuntimeError`` for one on another device than the parameters)."""
        present = set(tensordict.keys(include_nested=True, leaves_only=True))
        for key in self.in_keys:
            if key not in present:
                raise KeyError(
                    f"{type(self).__name__}: the input tensordict has no key {key!r} "
                    f"(required: {self.in_keys}); rename keys with loss.set_keys(...)"
                )
        # data on another device failed inside torch, naming neither key nor devices
        param = next(self.parameters(), None)
        device = tensordict.device or tensordict.get(self.tensor_keys.action).device
        if param is not None and not _same_device(device, param.device):
            raise RuntimeError(
                f"{type(self).__name__}: the input is on {device} but the loss's parameters "
                f"are on {param.device}; move one to the other with .to(device)"
            )
        # masks are optional, but a mask for the current step and none for the next would
        # let the targets pick unavailable actions
        mask = unravel_key(self.tensor_keys.action_mask)
        next_mask = unravel_key(("next", mask))
        if (mask in present) != (next_mask in present):
            missing = next_mask if mask in present else mask
            raise KeyError(
                f"{type(self).__name__}: the input has an action mask at only one of "
                f"{mask!r} and {next_mask!r}; {missing!r} is missing"
            )
        if self.one_step and not _transformed():
            terminated = tensordict.get(("next", self.tensor_keys.terminated))
            if not bool(terminated.all()):
                raise ValueError(
                    f"{type(self).__name__}: one_step=True, but {int((~terminated.bool()).sum())}"
                    f" of the samples do not terminate; set loss.one_step = False for "
                    f"multi-step data"
                )

    # ----------------------------------------------------------------- networks
    def _params(self, name: str, target: bool) -> TensorDictBase:
        return getattr(self, f"target_{name}_params" if target else f"{name}_params")

    def _registered_params(self, name: str, target: bool) -> TensorDictBase | None:
        """The parameter TensorDict registered for ``name`` (its target one, or, where it
        has none, the online one, whose data torchrl's getter then returns): the object
        itself, read without torchrl's getter of target parameters, which warns on every
        call when no updater is associated (slow) and builds a new TensorDict on every call
        where there are no target parameters."""
        for key in (f"target_{name}_params", f"{name}_params")[0 if target else 1 :]:
            # a module's TensorDictParams are registered submodules; an empty parameter
            # TensorDict (a parameter-free mixer) is a plain attribute
            found = self._modules.get(key, self.__dict__.get(key))
            if found is not None:
                return found
        return None

    def _bound(self, name: str, target: bool = False) -> nn.Module:
        """Network or mixer ``name`` holding its online (``target=False``) or target
        parameters, ready to call.

        Swapping the parameters into the module on every call (``params.to_module``) cost a
        quarter of a matrix-game update. ``convert_to_functional`` leaves the online
        parameters in the module itself, and the target parameters are bound once to a
        private copy of it. Every call checks that the module still computes with exactly
        the current parameter tensors: the parameter tree holds the same entries (a
        ``params.update(new_tensors)`` binds again) and those keep their memory (a
        ``.data =`` assignment binds again), so a loss that was loaded, moved or given new
        parameters is never silently stale.
        """
        if torch._C._are_functorch_transforms_active():
            return self._bound_transformed(name, target)
        cache = self.__dict__.setdefault("_bound_modules", {})  # not a registered submodule
        hit = cache.get((name, target))
        registered = self._registered_params(name, target)
        # reading the leaves of a TensorDictParams is slow: the binding keeps them and checks
        # the tree still holds them, and their memory (cleared by _apply and
        # load_state_dict, which may replace them)
        if (
            hit is not None
            and hit.params is registered
            and _same_tree(hit.tree, registered, hit.leaves)
            and _unchanged(hit.slots)
            and _storage(hit.leaves) == hit.signature
        ):
            return hit.module
        params = self._params(name, target)  # torchrl's getter: lazy parameters, warnings
        leaves = tuple(params.values(include_nested=True, leaves_only=True))
        signature = _storage(leaves)
        module = getattr(self, name)
        if _storage(_module_leaves(module)) != signature:
            module = self._bind_copy(name, module, params, signature)
        cache[(name, target)] = _Binding(
            signature, leaves, module, registered, _tree_edges(registered), _module_edges(module)
        )
        return module

    @staticmethod
    def _bind_copy(name: str, module: nn.Module, params, signature: tuple) -> nn.Module:
        """A private copy of ``module`` computing with ``params`` (the same tensors, never
        copies): each leaf set on its owner, or, for a module that keeps its parameters in
        a parameter TensorDict of its own (torchrl's ``MultiAgentMLP``), tensordict's
        ``to_module``."""
        module = copy.deepcopy(module)
        try:
            for key, value in params.items(include_nested=True, leaves_only=True):
                key = (key,) if isinstance(key, str) else key
                owner = module.get_submodule(".".join(key[:-1]))
                if key[-1] in owner._parameters and not isinstance(value, nn.Parameter):
                    # a view of the same storage, never a copy (target tensors); a Parameter
                    # is set itself, so its gradient reaches the optimizer's tensor
                    value = nn.Parameter(value, requires_grad=value.requires_grad)
                setattr(owner, key[-1], value)
        except (AttributeError, TypeError, KeyError):
            pass
        if _storage(_module_leaves(module)) != signature:
            params.to_module(module)
        if _storage(_module_leaves(module)) != signature:
            raise RuntimeError(f"could not bind the parameters of {name} to a module")
        return module

    def _bound_transformed(self, name: str, target: bool) -> nn.Module:
        """:meth:`_bound` inside ``torch.func`` transforms (``vmap`` over stacked parameters,
        as the vectorised matrix-game trainer does, or ``grad``). The parameters may be
        batched tensors that live only for the transform's call and have no storage to key
        a cache on, so they are bound again to a private copy of the module on every call
        (a few tensor assignments; the copy itself is made once)."""
        cache = self.__dict__.setdefault("_transformed_modules", {})
        module = cache.get((name, target))
        if module is None:
            module = cache[(name, target)] = copy.deepcopy(getattr(self, name))
        self._params(name, target).to_module(module)
        return module

    def _apply(self, *args, **kwargs):
        # .to(), .double(), .cuda() ... may give the parameters new tensors: bind again
        self.__dict__.pop("_bound_modules", None)
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_bound_modules", None)
        return super()._load_from_state_dict(*args, **kwargs)

    def _agent_run(
        self,
        name: str,
        tensordict: TensorDictBase,
        *,
        target: bool = False,
        with_next: bool = False,
        next_only: bool = False,
    ) -> tuple[TensorDictBase | None, TensorDictBase | None]:
        """Run agent network ``name`` (online or target parameters).

        The network runs on ``tensordict`` in torchrl's recurrent mode (a recurrent network
        unrolls over the time dimension of ``[B, T]`` data and writes its state at each step
        under ``"next"``; a feed-forward one is unaffected). With ``with_next`` it then runs
        one step on ``tensordict["next"]``, continuing from those states, without gradient.
        ``next_only`` skips the first pass when the network is not recurrent.

        Returns:
            shallow copies of ``tensordict`` (``None`` if skipped) and, with ``with_next``, of
            its ``"next"`` (else ``None``), holding the network's outputs; the input is not
            modified.
        """
        if self.one_step and not next_only:
            with_next = False  # one-step data: the next step is never bootstrapped from
        network = self._bound(name, target)
        # a recurrent module carries its state to the next step under "next"
        recurrent = any(unravel_key(k)[0] == "next" for k in network.out_keys)
        td = tensordict.copy()  # shallow: the network's outputs do not leak into the input
        fast = getattr(network, "forward_with_next", None)
        if with_next and recurrent and self.fast_unroll and fast is not None:
            # one unroll over T + 1 steps serves both passes (MultiAgentGRU.forward_with_next);
            # None when the data does not allow it, e.g. an episode restarting mid-sequence
            with set_recurrent_mode(True):
                both = fast(td, self._padding(tensordict), self.pack_padding)
            if both is not None:
                return both
            td = tensordict.copy()
        current = getattr(network, "forward_current", None)
        if not with_next and recurrent and self.fast_unroll and current is not None:
            # the inputs shared with the loss's other networks, only the real steps computed
            # (MultiAgentGRU.forward_current); None when the data does not allow it
            with set_recurrent_mode(True):
                out = current(td, self._padding(tensordict), self.pack_padding)
            if out is not None:
                return out, None
            td = tensordict.copy()
        out = None
        if recurrent or not next_only:
            with set_recurrent_mode(True):
                out = network(td)
        if not with_next:
            return out, None
        with torch.no_grad(), set_recurrent_mode(False):
            out_next = network(td.get("next").copy())
        return out, out_next

    def _agent_q(
        self,
        name: str,
        tensordict: TensorDictBase,
        *,
        target: bool = False,
        with_next: bool = False,
        next_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`_agent_run`, returning the utilities ``[*B, N, A]`` read from
        ``tensor_keys.action_value`` (``None`` where a pass was skipped)."""
        if self.one_step and not next_only:
            with_next = False  # one-step data: the next step is never bootstrapped from
        network = self._bound(name, target)
        if self.direct_feedforward and self._is_direct(network):
            module, key = network.module, network.in_keys[0]
            q = None if next_only else module(tensordict.get(key))
            if not with_next:
                return q, None
            with torch.no_grad():
                return q, module(tensordict.get("next").get(key))
        out, out_next = self._agent_run(
            name, tensordict, target=target, with_next=with_next, next_only=next_only
        )
        key = self.tensor_keys.action_value
        return (
            None if out is None else out.get(key),
            None if out_next is None else out_next.get(key),
        )

    def _is_direct(self, network: nn.Module) -> bool:
        """Whether ``network`` is a plain feed-forward ``TensorDictModule`` reading one entry
        and writing only the utilities (what :meth:`_agent_q` may call directly)."""
        return (
            type(network) is TensorDictModule
            and len(network.in_keys) == 1
            and [unravel_key(k) for k in network.out_keys]
            == [unravel_key(self.tensor_keys.action_value)]
        )

    def _checked_mixer(self, name: str, n_agents: int, n_actions: int | None = None) -> nn.Module:
        """Mixer (or joint network) ``name``, after checking it was built for ``n_agents``
        (and, for one that reads the joint action, ``n_actions``: QPLEX, QTRAN)."""
        mixer = getattr(self, name)
        if n_agents != mixer.n_agents:
            raise ValueError(
                f"{type(self).__name__}: the data has {n_agents} agents but {name} "
                f"was built for {mixer.n_agents}"
            )
        if n_actions is not None and n_actions != mixer.n_actions:
            raise ValueError(
                f"{type(self).__name__}: the agents' action values have {n_actions} actions "
                f"but {name} was built for {mixer.n_actions}"
            )
        return mixer

    def _mix(
        self,
        name: str,
        chosen: torch.Tensor,
        state: torch.Tensor,
        *,
        target: bool = False,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix ``chosen`` ``[*B, N, 1]`` with ``state`` ``[*B, S]`` into ``[*B, 1]`` (for a
        distributional mixer: quantiles ``[*B, N, K]`` into ``[*B, K]``).

        ``valid`` ``[*B]`` (the padding mask of ``[B, T]`` sequences, :meth:`_padding`): with
        :attr:`pack_padding`, when at most ``PACK_MAX_FILL`` of the samples are real, the
        mixer runs on the real ones only (a mixer mixes each sample on its own) and the
        padded ones get 0."""
        self._checked_mixer(name, chosen.shape[-2])
        mixer = self._bound(name, target)
        needs_state = getattr(mixer, "needs_state", True)
        lead = chosen.shape[:-2]
        rows = self._real_rows(valid, lead)
        if rows is not None:
            chosen = chosen.reshape(-1, *chosen.shape[-2:]).index_select(0, rows)
            if needs_state:
                state = state.reshape(-1, state.shape[-1]).index_select(0, rows)
        out = mixer(chosen, state) if needs_state else mixer(chosen)
        if rows is None:
            return out
        full = out.new_zeros(lead.numel(), *out.shape[1:])
        return full.index_copy_(0, rows, out).view(*lead, *out.shape[1:])

    def _real_rows(self, valid: torch.Tensor | None, lead: torch.Size) -> torch.Tensor | None:
        """The flat indices of the real samples of ``[B, T]`` sequences ``lead`` when
        :meth:`_mix` should mix only them (see there), else ``None``."""
        if (
            valid is None
            or not (self.fast_unroll and self.pack_padding)
            or len(lead) < 2
            or valid.shape != lead
            or _transformed()
        ):
            return None
        real = valid.reshape(-1) > 0  # a float mask: positive exactly at the real samples
        if not packing_pays(int(real.sum()), real.numel()):
            return None
        return real.nonzero().squeeze(1)

    def _mask(self, tensordict: TensorDictBase, key: NestedKey) -> torch.Tensor | None:
        return tensordict.get(key, None)

    def _padding(self, tensordict: TensorDictBase) -> torch.Tensor | None:
        """The real-sample mask ``[*B]``, times the importance weights when the sample has
        them (then a float mask: positive exactly where the samples are real)."""
        pad = tensordict.get(self.tensor_keys.padding_mask, None)
        weight = tensordict.get(self.tensor_keys.sample_weight, None)
        if weight is None:
            return pad
        weight = weight.reshape(*weight.shape, *([1] * (tensordict.ndim - weight.ndim)))
        weight = weight.expand(tensordict.shape).float()
        return weight if pad is None else weight * pad.reshape(tensordict.shape)

    # ----------------------------------------------------------------- targets
    def _target_value(
        self, tensordict: TensorDictBase, next_greedy: torch.Tensor, agent: str, mixer: str
    ) -> torch.Tensor:
        """Bootstrapped double-Q target ``y`` ``[*B, 1]``.

        The next-state value is the *target* parameters of ``agent``/``mixer`` evaluated at
        ``next_greedy`` ``[*B, N]``, the online main agents' masked greedy next actions.
        TD(0): ``y = r + gamma * (1 - terminated) * V'``. TD(lambda) on ``[B, T]`` sequences:
        ``y_t = r_t + gamma (1 - terminated_t) [(1 - lmbda) V'_t + lmbda y_{t+1}]``, the
        recursion stopping at ``done``. Truncation never stops the bootstrap itself.
        """
        with torch.no_grad():
            if self.one_step:  # terminal everywhere: the bootstrap is multiplied by 0
                next_value = self._skipped_bootstrap(tensordict)
            else:
                next_value = self._bootstrap_value(tensordict, next_greedy, agent, mixer)
            return self._lambda_return(tensordict, next_value)

    def _lambda_return(self, tensordict: TensorDictBase, next_value: torch.Tensor) -> torch.Tensor:
        """The TD(0) or TD(lambda) return ``[*B, F]`` of next-state values ``[*B, F]``,
        applied to every column alike: ``F = 1`` for values, ``F = K`` quantile fractions for
        distributions (each fraction index gets the scalar recursion)."""
        next_td = tensordict.get("next")
        shape = next_value.shape

        def flag(key, dtype=None):
            x = next_td.get(key)
            if x.numel() != shape[:-1].numel():
                raise ValueError(
                    f"{type(self).__name__}: {('next', key)!r} has shape {tuple(x.shape)}; the "
                    f"losses take one team value per sample, [*B, 1] = "
                    f"{(*shape[:-1], 1)} (per-agent rewards: sum or average them first)"
                )
            x = x.to(dtype) if dtype is not None else x.bool()
            return x.reshape(*shape[:-1], 1).expand(shape)

        reward = flag(self.tensor_keys.reward, next_value.dtype)
        terminated = flag(self.tensor_keys.terminated)
        # gamma * lmbda = 0 is TD(0), and torchrl's vectorised TD(lambda) fails on it
        # (IndexError)
        if (
            self.value_type == ValueEstimators.TDLambda
            and tensordict.ndim >= 2
            and self.gamma * self.lmbda > 0
        ):
            done = flag(self.tensor_keys.done)
            return vec_td_lambda_return_estimate(
                self.gamma, self.lmbda, next_value, reward, done, terminated, time_dim=-2
            )
        return td0_return_estimate(self.gamma, next_value, reward, terminated)

    def _bootstrap_value(
        self, tensordict: TensorDictBase, next_greedy: torch.Tensor, agent: str, mixer: str
    ) -> torch.Tensor:
        """``V'`` ``[*B, 1]``: the target parameters of ``agent``/``mixer`` at
        ``tensordict["next"]`` and the joint action ``next_greedy`` ``[*B, N]`` (called
        without gradient). Losses whose joint network is not a :class:`Mixer` of chosen
        utilities override it."""
        _, q_next = self._agent_q(agent, tensordict, target=True, with_next=True, next_only=True)
        return self._mix(
            mixer,
            gather_chosen(q_next, next_greedy, check=False),
            self._state(tensordict, ("next", self.tensor_keys.state)),
            target=True,
            valid=self._padding(tensordict),
        )

    def _skipped_bootstrap(self, tensordict: TensorDictBase) -> torch.Tensor:
        """What stands for :meth:`_bootstrap_value` with :attr:`one_step`: zeros ``[*B, 1]``
        (losses whose bootstrap draws random numbers draw them here, in the same order)."""
        reward = tensordict.get(("next", self.tensor_keys.reward))
        return torch.zeros(*tensordict.batch_size, 1, dtype=reward.dtype, device=reward.device)

    # ----------------------------------------------------------------- joint values
    def _main_joint(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """Main utilities, their greedy tuple and the mixed ``Q_tot`` of the taken action;
        with ``with_next`` also the online greedy next action ``next_greedy_action``."""
        q, q_next = self._agent_q("agent_network", tensordict, with_next=with_next)
        action = tensordict.get(self.tensor_keys.action)
        state = self._state(tensordict)
        pad = self._padding(tensordict)
        q_tot = self._mix("mixer", gather_chosen(q, action), state, valid=pad)
        out = TensorDict(
            {"action_value": q, "greedy_action": self._greedy(tensordict, q), "q_tot": q_tot},
            batch_size=tensordict.batch_size,
        )
        if with_next:
            out.set("next_greedy_action", self._next_greedy(tensordict, q_next))
        return out

    def _greedy(self, tensordict: TensorDictBase, q: torch.Tensor) -> torch.Tensor:
        """Masked greedy action ``[*B, N]`` of utilities ``q`` ``[*B, N, A]`` at
        ``tensordict`` (padding is not checked for available actions)."""
        pad = self._padding(tensordict)
        return masked_greedy(
            q.detach(),
            self._mask(tensordict, self.tensor_keys.action_mask),
            None if pad is None else ~pad.bool(),
        )

    def _next_greedy(self, tensordict: TensorDictBase, q_next: torch.Tensor) -> torch.Tensor:
        """Masked greedy action ``[*B, N]`` of the next-step utilities ``q_next``; samples after
        a termination (or padding) are never bootstrapped from, so their masks go unchecked."""
        if q_next is None:  # one_step: no next pass, no bootstrap to pick an action for
            return torch.zeros_like(tensordict.get(self.tensor_keys.action), dtype=torch.long)
        next_td = tensordict.get("next")
        skip = next_td.get(self.tensor_keys.terminated).bool()
        pad = self._padding(tensordict)
        if pad is not None:
            skip = skip | ~pad.bool().reshape(skip.shape)
        return masked_greedy(
            q_next.detach(),
            self._mask(next_td, self.tensor_keys.action_mask),
            skip,
            name=f"the next step's {('next', self.tensor_keys.action_mask)!r} (not terminated: "
            "the target bootstraps from it)",
        )

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """Joint values of the taken actions with the online parameters (with gradient).

        Returns a ``TensorDict`` of batch ``[*B]`` with ``action_value`` ``[*B, N, A]`` (main
        utilities), ``greedy_action`` ``[*B, N]``, ``q_tot`` ``[*B, 1]`` (the monotonic main
        function) and ``q_jt`` ``[*B, 1]`` (the joint value the method represents); methods
        with a residual add ``q_r`` and ``w_r``. ``with_next`` adds ``next_greedy_action``
        ``[*B, N]`` (the online agents' masked greedy action at ``tensordict["next"]``).
        """
        raise NotImplementedError

    def _td_forward(
        self, tensordict: TensorDictBase, agent: str = "agent_network", mixer: str = "mixer"
    ) -> TensorDict:
        """``forward`` of the losses whose only term is ``loss_td = mean (Q_tot - y)^2`` with
        ``y`` from their own target ``agent``/``mixer`` (QMIX, VDN, QPLEX)."""
        self._check_input(tensordict)
        joint = self.joint_q(tensordict, with_next=True)
        target = self._target_value(tensordict, joint.get("next_greedy_action"), agent, mixer)
        q_tot = joint.get("q_tot")
        pad = self._padding(tensordict)
        td_error = q_tot - target
        return self._finish(
            tensordict,
            td_error,
            {"loss_td": masked_mean(td_error.pow(2), pad)},
            {"q_tot_mean": masked_mean(q_tot, pad), "target_mean": masked_mean(target, pad)},
        )

    def _finish(
        self,
        tensordict: TensorDictBase,
        td_error: torch.Tensor,
        losses: dict[str, torch.Tensor],
        diagnostics: dict[str, torch.Tensor],
    ) -> TensorDict:
        """Write the priority back and pack losses and detached diagnostics (the end of every
        loss's forward: the agent inputs its networks shared are let go here)."""
        clear_shared_inputs()
        pad = self._padding(tensordict)
        abs_err = td_error.detach().abs()
        tensordict.set(self.tensor_keys.priority, abs_err)
        out = dict(losses)
        out["td_error"] = masked_mean(abs_err, pad)
        out.update({k: v.detach() for k, v in diagnostics.items()})
        return TensorDict(out, batch_size=[])
