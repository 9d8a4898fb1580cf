"""ResZ (Shen et al., NeurIPS 2022): ResQ over return distributions."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase, dispatch

from resq_torchrl.modules.dist_mixers import DistributionalMixer
from resq_torchrl.objectives.central import fresh_copy
from resq_torchrl.objectives.common import is_greedy_joint_action, masked_mean
from resq_torchrl.objectives.distributional import (
    DistributionalFactorizationLoss,
    gather_quantiles,
)


class ResZLoss(DistributionalFactorizationLoss):
    """ResZ: ``Z_jt(s, u) = Z_tot(s, u) + w_r(s, u) Z_r(s, u)`` at every quantile fraction.

    * ``Z_tot`` - the main distribution: ``mixer`` (DMIX's mean-shape mixer, or a
      :class:`~resq_torchrl.modules.QuantileMixer` over VDN for DDN's sum) of the main IQN
      agents' quantiles; only these agents act, greedily by their means (DIGM).
    * ``Z_r = -|R|`` elementwise, so every quantile of the residual is ``<= 0``; ``R`` is an
      unconstrained ``residual_mixer`` of a second set of IQN agents, evaluated at the *same*
      fractions as the main agents.
    * ``w_r`` - ``0`` when the taken joint action at step ``t`` is the main agents' greedy
      joint action (by the mean, masked) at the same step ``t``, else ``1``; no gradient.
    * ``Z*`` - a central distribution (``central_agent_network`` + unconstrained
      ``central_mixer``) at its own fractions. The target is
      ``y = r + gamma (1 - terminated) Z*^-(s', u')`` at ``K'`` target fractions: the
      *target* central networks at the online main agents' greedy next action (TD(lambda) per
      fraction over ``[B, T]`` sequences when selected).

    Loss: ``loss_td`` = quantile Huber loss of ``Z_jt`` (at the main fractions) against
    ``y``; ``loss_central = central_loss_coef *`` the quantile Huber loss of ``Z*(s, u)`` (at
    its fractions) against ``y``. Diagnostics: ``td_error`` (mean ``|E[Z_jt] - E[y]|``),
    ``w_r_mean``, ``q_r_mean`` (``E[Z_r]``), ``q_tot_mean``, ``q_jt_mean``, ``target_mean``.

    Args:
        agent_network: main IQN agents writing ``("agents", "action_value")``
            ``[*B, N, A, K]`` for the fractions at ``tensor_keys.fractions``.
        mixer: the main :class:`~resq_torchrl.modules.DistributionalMixer` (``DMIXMixer``).
        residual_mixer: unconstrained distributional mixer for ``R``
            (``QuantileMixer(FeedForwardMixer(...))``).
        central_mixer: unconstrained distributional mixer for ``Z*`` (the same kind).

    Keyword Args:
        residual_agent_network: agents mixed into ``R``; default a re-initialised copy of
            ``agent_network``.
        central_agent_network: agents mixed into ``Z*``; default a re-initialised copy.
        central_loss_coef: weight of ``loss_central``.
        n_quantiles, n_target_quantiles, kappa, gamma: see
            :class:`~resq_torchrl.objectives.distributional.DistributionalFactorizationLoss`.
    """

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    residual_agent_network: TensorDictModuleBase
    residual_agent_network_params: TensorDictParams
    target_residual_agent_network_params: TensorDictParams
    central_agent_network: TensorDictModuleBase
    central_agent_network_params: TensorDictParams
    target_central_agent_network_params: TensorDictParams
    mixer: DistributionalMixer
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams
    residual_mixer: DistributionalMixer
    residual_mixer_params: TensorDictParams
    target_residual_mixer_params: TensorDictParams
    central_mixer: DistributionalMixer
    central_mixer_params: TensorDictParams
    target_central_mixer_params: TensorDictParams

    def _extra_losses(self) -> list[str]:
        return ["loss_central"]

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        mixer: DistributionalMixer,
        residual_mixer: DistributionalMixer,
        central_mixer: DistributionalMixer,
        *,
        residual_agent_network: TensorDictModuleBase | None = None,
        central_agent_network: TensorDictModuleBase | None = None,
        central_loss_coef: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not central_loss_coef >= 0:
            raise ValueError(f"central_loss_coef must be >= 0, got {central_loss_coef}")
        self.central_loss_coef = float(central_loss_coef)
        if residual_agent_network is None:
            residual_agent_network = fresh_copy(agent_network)
        if central_agent_network is None:
            central_agent_network = fresh_copy(agent_network)
        # only the central Z* is bootstrapped from, so only it keeps target parameters
        self._register_agent_network("agent_network", agent_network, target=False)
        self._register_agent_network("residual_agent_network", residual_agent_network, target=False)
        self._register_agent_network("central_agent_network", central_agent_network, target=True)
        self._register_dist_mixer("mixer", mixer, target=False)
        self._register_dist_mixer("residual_mixer", residual_mixer, target=False)
        self._register_dist_mixer("central_mixer", central_mixer, target=True)

    def _chosen_z(
        self, agent: str, mixer: str, tensordict: TensorDictBase, tau: torch.Tensor
    ) -> torch.Tensor:
        """``mixer`` of ``agent``'s quantiles of the taken actions at ``tau``: ``[*B, K]``."""
        z, _ = self._agent_z(agent, tensordict, tau)
        action = tensordict.get(self.tensor_keys.action)
        state = tensordict.get(self.tensor_keys.state)
        pad = self._padding(tensordict)
        return self._mix(mixer, gather_quantiles(z, action), state, valid=pad)

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """:meth:`_main_z` plus ``z_r`` ``[*B, K]`` (``<= 0``), ``w_r`` ``[*B, 1]``, ``z_jt``
        ``[*B, K]`` and their means ``q_r``, ``q_jt`` ``[*B, 1]``."""
        out = self._main_z(tensordict, with_next)
        tau = out.get("fractions")
        action = tensordict.get(self.tensor_keys.action)
        z_tot = out.get("z_tot")
        w_r = (~is_greedy_joint_action(action, out.get("greedy_action"))).to(z_tot.dtype)
        z_r = -self._chosen_z("residual_agent_network", "residual_mixer", tensordict, tau).abs()
        z_jt = z_tot + w_r * z_r
        out.update(
            {
                "z_r": z_r,
                "w_r": w_r,
                "z_jt": z_jt,
                "q_r": z_r.mean(-1, keepdim=True),
                "q_jt": z_jt.mean(-1, keepdim=True),
            }
        )
        return out

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        self._check_input(tensordict)
        joint = self.joint_q(tensordict, with_next=True)
        target = self._target_value(
            tensordict, joint.get("next_greedy_action"), "central_agent_network", "central_mixer"
        )
        pad = self._padding(tensordict)
        tau = joint.get("fractions")
        # Z* at its own fractions
        tau_central = self._fractions(
            tensordict.exclude(self.tensor_keys.fractions), self.n_quantiles
        )
        z_central = self._chosen_z(
            "central_agent_network", "central_mixer", tensordict, tau_central
        )
        target_mean = target.mean(-1, keepdim=True)
        td_error = joint.get("q_jt") - target_mean
        return self._finish(
            tensordict,
            td_error,
            {
                "loss_td": self._quantile_loss(joint.get("z_jt"), tau, target, pad),
                "loss_central": self.central_loss_coef
                * self._quantile_loss(z_central, tau_central, target, pad),
            },
            {
                "w_r_mean": masked_mean(joint.get("w_r"), pad),
                "q_r_mean": masked_mean(joint.get("q_r"), pad),
                "q_tot_mean": masked_mean(joint.get("q_tot"), pad),
                "q_jt_mean": masked_mean(joint.get("q_jt"), pad),
                "target_mean": masked_mean(target_mean, pad),
            },
        )
