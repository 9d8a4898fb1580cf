"""Machinery shared by the distributional losses (DDN, DMIX, ResZ), written once.

* :func:`quantile_huber_loss` - the quantile regression loss of IQN (kappa-Huber).
* :func:`gather_quantiles` - per-agent quantiles of the taken action.
* :class:`DistributionalFactorizationLoss` - the base: quantile fractions, running IQN agents
  with given fractions, distributional mixing, greedy actions by the mean, and the
  distributional double-Q target (TD(0)/TD(lambda) of :class:`ValueFactorizationLoss`
  applied per target fraction).

Shapes: ``K`` fractions for the loss, ``K'`` for targets; agent quantiles
``[*B, N, A, K]``, chosen ``[*B, N, K]``, joint distributions ``[*B, K]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch
from tensordict.utils import NestedKey

from resq_torchrl.modules.dist_mixers import DistributionalMixer
from resq_torchrl.modules.iqn import FRACTIONS_KEY, sample_fractions
from resq_torchrl.objectives.common import ValueFactorizationLoss, masked_mean

__all__ = ["quantile_huber_loss", "gather_quantiles", "DistributionalFactorizationLoss"]


def quantile_huber_loss(
    pred: torch.Tensor, tau: torch.Tensor, target: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """IQN's loss per sample: ``sum_k mean_j |tau_k - 1{u_kj < 0}| H_kappa(u_kj) / kappa`` with
    ``u_kj = target_j - pred_k`` and the Huber function ``H_kappa`` (``kappa = 0``: the plain
    quantile loss ``|tau - 1{u < 0}| |u|``).

    Args:
        pred: ``[*B, K]`` predicted quantiles at fractions ``tau`` ``[*B, K]``.
        target: ``[*B, K']`` target samples (no gradient flows into them).

    Returns:
        ``[*B, 1]``.
    """
    if pred.shape != tau.shape or pred.shape[:-1] != target.shape[:-1]:
        raise ValueError(
            f"quantile_huber_loss: pred {tuple(pred.shape)}, tau {tuple(tau.shape)} and target "
            f"{tuple(target.shape)} must share the batch dims, pred and tau their fractions"
        )
    u = target.detach().unsqueeze(-2) - pred.unsqueeze(-1)  # [*B, K, K']
    if kappa > 0:
        abs_u = u.abs()
        huber = torch.where(abs_u <= kappa, 0.5 * u.pow(2), kappa * (abs_u - 0.5 * kappa)) / kappa
    else:
        huber = u.abs()
    weight = (tau.unsqueeze(-1) - (u.detach() < 0).to(u.dtype)).abs()
    return (weight * huber).mean(-1).sum(-1, keepdim=True)


def gather_quantiles(z: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``[*B, N, A, K]`` x ``[*B, N]`` -> the taken actions' quantiles ``[*B, N, K]``."""
    if action.shape != z.shape[:-2]:
        raise ValueError(
            f"action of shape {tuple(action.shape)} does not match agent quantiles of shape "
            f"{tuple(z.shape)} (expected [*B, N] actions for [*B, N, A, K] quantiles)"
        )
    index = action.long().unsqueeze(-1).unsqueeze(-1).expand(*action.shape, 1, z.shape[-1])
    return z.gather(-2, index).squeeze(-2)


class DistributionalFactorizationLoss(ValueFactorizationLoss):
    """Base of the losses over return distributions.

    Agent networks are IQN agents (:class:`~resq_torchrl.modules.MultiAgentIQN`,
    :class:`~resq_torchrl.modules.IQNAgentMLP`) writing quantiles ``[*B, N, A, K]`` at
    ``tensor_keys.action_value`` for the fractions they read at ``tensor_keys.fractions``
    ``[*B, K]``; mixers are :class:`~resq_torchrl.modules.DistributionalMixer`. Greedy
    actions are by the mean over the loss's fractions (DIGM).

    Keyword Args:
        n_quantiles: ``K``, fractions drawn per sample for the online networks (8).
        n_target_quantiles: ``K'``, fractions drawn per sample for the targets (8).
        kappa: Huber threshold of the quantile loss (1).
        gamma: discount.
    """

    @dataclass
    class _AcceptedKeys(ValueFactorizationLoss._AcceptedKeys):
        """Keys of :class:`ValueFactorizationLoss` plus

        Attributes:
            fractions: quantile fractions ``[*B, K]`` the agent networks read; the loss
                writes the fractions it draws there (a sample's agents share them).
                Default ``"quantile_fractions"``.
        """

        fractions: NestedKey = FRACTIONS_KEY

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    def __init__(
        self,
        *,
        n_quantiles: int = 8,
        n_target_quantiles: int = 8,
        kappa: float = 1.0,
        gamma: float = 0.99,
    ) -> None:
        super().__init__(gamma=gamma)
        if n_quantiles < 1 or n_target_quantiles < 1 or kappa < 0:
            raise ValueError(
                f"need n_quantiles >= 1, n_target_quantiles >= 1 and kappa >= 0, got "
                f"{n_quantiles}, {n_target_quantiles}, {kappa}"
            )
        self.n_quantiles, self.n_target_quantiles = int(n_quantiles), int(n_target_quantiles)
        self.kappa = float(kappa)

    # ----------------------------------------------------------------- networks
    def _fractions(self, tensordict: TensorDictBase, n: int) -> torch.Tensor:
        """Fractions ``[*B, n]`` for the samples of ``tensordict``: those given at
        ``tensor_keys.fractions`` (evaluation with fixed fractions) or freshly drawn."""
        given = tensordict.get(self.tensor_keys.fractions, None)
        if given is not None:
            return given
        device = self._data_device(tensordict)
        return sample_fractions(tensordict.batch_size, n, device=device)

    def _data_device(self, tensordict: TensorDictBase) -> torch.device:
        """The device of the data: the action's (root) or the reward's (``"next"``), else
        the state's."""
        for key in (self.tensor_keys.action, self.tensor_keys.reward, self.tensor_keys.state):
            x = tensordict.get(key, None)
            if x is not None:
                return x.device
        raise KeyError(
            f"{type(self).__name__}: the input has none of {self.tensor_keys.state!r}, "
            f"{self.tensor_keys.action!r}, {self.tensor_keys.reward!r}"
        )

    def _agent_z(
        self,
        name: str,
        tensordict: TensorDictBase,
        tau: torch.Tensor | None,
        tau_next: torch.Tensor | None = None,
        *,
        target: bool = False,
        next_only: bool = False,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Quantiles ``[*B, N, A, K]`` of agent network ``name`` at fractions ``tau`` (and,
        with ``tau_next``, at ``tensordict["next"]`` for those fractions, without gradient);
        see :meth:`ValueFactorizationLoss._agent_run`."""
        td = tensordict.copy()
        key = self.tensor_keys.fractions
        if tau is not None:
            td.set(key, tau)
        if tau_next is not None:
            next_td = td.get("next").copy()
            next_td.set(key, tau_next)
            td.set("next", next_td)
        return self._agent_q(
            name, td, target=target, with_next=tau_next is not None, next_only=next_only
        )

    def _register_dist_mixer(self, name: str, mixer: DistributionalMixer, *, target: bool):
        self._register_mixer(name, mixer, target=target, expected=DistributionalMixer)

    def _bootstrap_value(self, tensordict, next_greedy, agent, mixer) -> torch.Tensor:
        """``Z'`` ``[*B, K']``: target ``agent``/``mixer`` at ``s'`` and ``next_greedy``, at
        ``K'`` freshly drawn target fractions."""
        next_td = tensordict.get("next")
        tau_next = sample_fractions(
            tensordict.batch_size,
            self.n_target_quantiles,
            device=self._data_device(next_td),
        )
        # a recurrent agent first unrolls over the sequence for its state: only the state is
        # used, so that pass reads the same (few) fractions rather than drawing 32
        _, z_next = self._agent_z(
            agent, tensordict, tau_next, tau_next, target=True, next_only=True
        )
        return self._mix(
            mixer,
            gather_quantiles(z_next, next_greedy),
            self._state(next_td),
            target=True,
            valid=self._padding(tensordict),
        )

    def _skipped_bootstrap(self, tensordict: TensorDictBase) -> torch.Tensor:
        """Zeros ``[*B, K']`` for :attr:`one_step`, after drawing the target fractions
        :meth:`_bootstrap_value` would have drawn (the same calls, so the random stream, and
        with it the training, stays the same)."""
        next_td = tensordict.get("next")
        device = self._data_device(next_td)
        sample_fractions(tensordict.batch_size, self.n_target_quantiles, device=device)
        reward = next_td.get(self.tensor_keys.reward)
        return torch.zeros(
            *tensordict.batch_size, self.n_target_quantiles, dtype=reward.dtype, device=device
        )

    def _main_z(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """Main agents at the loss's fractions: ``fractions`` ``[*B, K]``,
        ``action_value_quantiles`` ``[*B, N, A, K]``, ``action_value`` (their mean,
        ``[*B, N, A]``), ``greedy_action``, ``z_tot`` ``[*B, K]`` and ``q_tot`` ``[*B, 1]``;
        with ``with_next`` also ``next_greedy_action`` (greedy by the mean at ``s'``)."""
        tau = self._fractions(tensordict, self.n_quantiles)
        tau_next = self._fractions(tensordict.get("next"), self.n_quantiles) if with_next else None
        z, z_next = self._agent_z("agent_network", tensordict, tau, tau_next)
        action = tensordict.get(self.tensor_keys.action)
        q = z.mean(-1)
        z_tot = self._mix(
            "mixer",
            gather_quantiles(z, action),
            self._state(tensordict),
            valid=self._padding(tensordict),
        )
        out = TensorDict(
            {
                "fractions": tau,
                "action_value_quantiles": z,
                "action_value": q,
                "greedy_action": self._greedy(tensordict, q),
                "z_tot": z_tot,
                "q_tot": z_tot.mean(-1, keepdim=True),
            },
            batch_size=tensordict.batch_size,
        )
        if with_next:
            q_next = None if z_next is None else z_next.mean(-1)  # None: one_step
            out.set("next_greedy_action", self._next_greedy(tensordict, q_next))
        return out

    def _quantile_loss(
        self, z: torch.Tensor, tau: torch.Tensor, target: torch.Tensor, pad
    ) -> torch.Tensor:
        """Mean over real samples of :func:`quantile_huber_loss`."""
        return masked_mean(quantile_huber_loss(z, tau, target, self.kappa), pad)

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """:meth:`_main_z` with ``z_jt = z_tot`` and ``q_jt = q_tot`` (DDN, DMIX; ResZ adds its
        residual)."""
        out = self._main_z(tensordict, with_next)
        out.set("z_jt", out.get("z_tot"))
        out.set("q_jt", out.get("q_tot"))
        return out

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """The quantile loss of ``Z_tot`` against the loss's own target networks (DDN, DMIX;
        ResZ overrides it)."""
        self._check_input(tensordict)
        joint = self.joint_q(tensordict, with_next=True)
        target = self._target_value(
            tensordict, joint.get("next_greedy_action"), "agent_network", "mixer"
        )
        pad = self._padding(tensordict)
        z_tot, tau = joint.get("z_tot"), joint.get("fractions")
        td_error = joint.get("q_tot") - target.mean(-1, keepdim=True)
        return self._finish(
            tensordict,
            td_error,
            {"loss_td": self._quantile_loss(z_tot, tau, target, pad)},
            {
                "q_tot_mean": masked_mean(joint.get("q_tot"), pad),
                "target_mean": masked_mean(target.mean(-1, keepdim=True), pad),
            },
        )
