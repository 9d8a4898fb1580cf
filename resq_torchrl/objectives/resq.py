"""ResQ (Shen et al., NeurIPS 2022): a monotonic main function plus a non-positive residual."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase, dispatch
from torch import nn

from resq_torchrl.objectives.central import CentralValueLoss, fresh_copy
from resq_torchrl.objectives.common import gather_chosen, is_greedy_joint_action, masked_mean


class ResQLoss(CentralValueLoss):
    """ResQ: ``Q_jt(s, u) = Q_tot(s, u) + w_r(s, u) Q_r(s, u)``.

    * ``Q_tot`` - the monotonic ``mixer`` (QMIX, Qatten or VDN) of the main utilities
      ``Q_i``; these are the only networks used to act, so IGM holds by construction.
    * ``Q_r`` - the residual: an unconstrained ``residual_mixer`` ``R`` of a second set of
      utilities (``residual_agent_network``). With ``residual_sign="abs"`` (default)
      ``Q_r = -|R| <= 0``; with ``"penalty"`` ``Q_r = R`` and ``relu(Q_r)^2`` is added as
      ``loss_residual_sign``.
    * ``w_r`` - ``0`` when every agent took its masked greedy action under ``Q_i``, else ``1``;
      it carries no gradient.
    * ``Q*`` - a central unconstrained value (``central_agent_network`` + ``central_mixer``)
      trained on the same target. The target is ``y = r + gamma (1 - terminated) Q*^-(s', u')``
      with ``Q*^-`` the *target* parameters of the central networks and ``u'`` the online main
      agents' masked greedy action (double Q).

    Loss: ``loss_td = mean (Q_jt - y)^2``, ``loss_central = central_loss_coef * mean (Q* - y)^2``
    and, in penalty mode, ``loss_residual_sign = residual_sign_coef * mean relu(Q_r)^2``.

    Optional, off by default (not in the paper): ``tot_weighting="cw"`` scales the gradient
    that ``loss_td`` sends to ``Q_tot`` by ``w_tot = 1`` where ``Q_tot < y`` or the taken
    action is the greedy one, ``tot_weight_alpha`` elsewhere: Optimistically-Weighted QMIX's
    test (``Q_tot < y``) with the greedy action always at full weight, as in CW-QMIX (whose
    own test, ``y > Q*^-(s, u_bar)``, is not used here). The values of ``Q_jt`` are
    unchanged (so Theorem 1 still holds); only how much of an overestimate ``Q_tot``
    unlearns changes, the rest being left to the residual, which can only lower ``Q_jt``.
    Written as ``Q_jt = [w_tot Q_tot + (1 - w_tot) sg(Q_tot)] + w_r Q_r`` (``sg``:
    stop-gradient) rather than ``w_tot Q_tot + w_r Q_r``: the latter would break IGM when
    ``Q_tot < 0``. It is a remedy tried against relative overgeneralisation with rare
    rewards (predator-prey, see ``docs/results.md``).
    Diagnostics: ``td_error`` (mean ``|Q_jt - y|``), ``w_r_mean``, ``q_r_mean``, ``q_tot_mean``,
    ``q_jt_mean``, ``target_mean``.

    Args:
        agent_network: main agents, ``TensorDictModule`` writing ``("agents", "action_value")``
            ``[*B, N, A]``.
        mixer: monotonic torchrl ``Mixer`` for ``Q_tot`` (``QMixer``, ``QattenMixer`` or
            ``VDNMixer``).
        residual_mixer: unconstrained ``Mixer`` for ``R`` (``FeedForwardMixer``).
        central_mixer: unconstrained ``Mixer`` for ``Q*`` (``FeedForwardMixer``).

    Keyword Args:
        residual_agent_network: utilities mixed into ``R``; default: a re-initialised copy of
            ``agent_network``.
        central_agent_network: utilities mixed into ``Q*``; default: a re-initialised copy.
        residual_sign: ``"abs"`` or ``"penalty"``.
        tot_weighting: ``"none"`` (the paper) or ``"cw"`` (see above).
        tot_weight_alpha: ``w_tot`` of the down-weighted samples with ``"cw"``, in ``(0, 1]``.
        central_loss_coef: weight of ``loss_central``.
        residual_sign_coef: weight of ``loss_residual_sign`` (penalty mode).
        gamma: discount.

    Example:
        >>> from resq_torchrl.modules import QMixer, FeedForwardMixer, make_agent_qnet
        >>> from resq_torchrl.envs import MatrixGameEnv
        >>> env = MatrixGameEnv(batch_size=[8])
        >>> loss = ResQLoss(
        ...     make_agent_qnet(1, 3, 2),
        ...     QMixer(n_agents=2, state_dim=1),
        ...     FeedForwardMixer(n_agents=2, state_dim=1),
        ...     FeedForwardMixer(n_agents=2, state_dim=1),
        ... )
        >>> out = loss(env.rand_step(env.reset()))
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_central', 'loss_td']
    """

    RESIDUAL_SIGNS = ("abs", "penalty")
    TOT_WEIGHTINGS = ("none", "cw")

    residual_agent_network: TensorDictModuleBase
    residual_agent_network_params: TensorDictParams
    target_residual_agent_network_params: TensorDictParams
    residual_mixer: nn.Module
    residual_mixer_params: TensorDictParams
    target_residual_mixer_params: TensorDictParams

    def _extra_losses(self) -> list[str]:
        return ["loss_central"] + (
            ["loss_residual_sign"] if self.residual_sign == "penalty" else []
        )

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        mixer: nn.Module,
        residual_mixer: nn.Module,
        central_mixer: nn.Module,
        *,
        residual_agent_network: TensorDictModuleBase | None = None,
        central_agent_network: TensorDictModuleBase | None = None,
        residual_sign: str = "abs",
        central_loss_coef: float = 1.0,
        residual_sign_coef: float = 1.0,
        tot_weighting: str = "none",
        tot_weight_alpha: float = 0.1,
        gamma: float = 0.99,
    ) -> None:
        if residual_sign not in self.RESIDUAL_SIGNS:
            raise ValueError(
                f"residual_sign must be one of {self.RESIDUAL_SIGNS}, got {residual_sign!r}"
            )
        if tot_weighting not in self.TOT_WEIGHTINGS:
            raise ValueError(
                f"tot_weighting must be one of {self.TOT_WEIGHTINGS}, got {tot_weighting!r}"
            )
        if residual_sign == "penalty" and not float(residual_sign_coef) > 0.0:
            # a penalty of weight 0 trains the raw, sign-free R (the released code's bug):
            # Q_r <= 0, hence Theorem 1's IGM, would not hold
            raise ValueError(
                "residual_sign_coef must be > 0 with residual_sign='penalty' (0 leaves Q_r "
                f"unconstrained in sign), got {residual_sign_coef}"
            )
        if not 0.0 < tot_weight_alpha <= 1.0:
            raise ValueError(f"tot_weight_alpha must lie in (0, 1], got {tot_weight_alpha}")
        if residual_agent_network is None:
            residual_agent_network = fresh_copy(agent_network)
        super().__init__(
            agent_network,
            mixer,
            central_mixer,
            central_agent_network=central_agent_network,
            central_loss_coef=central_loss_coef,
            gamma=gamma,
            companions=[("residual", residual_agent_network, residual_mixer)],
        )
        self.residual_sign = residual_sign
        self.residual_sign_coef = residual_sign_coef
        self.tot_weighting = tot_weighting
        self.tot_weight_alpha = float(tot_weight_alpha)

    def _residual(self, tensordict: TensorDictBase) -> torch.Tensor:
        """``Q_r`` ``[*B, 1]`` of the taken joint action."""
        q, _ = self._agent_q("residual_agent_network", tensordict)
        action = tensordict.get(self.tensor_keys.action)
        r = self._mix(
            "residual_mixer",
            gather_chosen(q, action, check=False),
            tensordict.get(self.tensor_keys.state),
            valid=self._padding(tensordict),
        )
        return -r.abs() if self.residual_sign == "abs" else r

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        out = self._main_joint(tensordict, with_next)
        action = tensordict.get(self.tensor_keys.action)
        w_r = (~is_greedy_joint_action(action, out.get("greedy_action"))).to(out.get("q_tot").dtype)
        q_r = self._residual(tensordict)
        out.update({"q_r": q_r, "w_r": w_r, "q_jt": out.get("q_tot") + w_r * q_r})
        return out

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        joint, target, pad = self._joint_and_target(tensordict)
        q_jt, q_r = joint.get("q_jt"), joint.get("q_r")
        diagnostics = {}
        if self.tot_weighting == "cw":
            q_tot, w_r = joint.get("q_tot"), joint.get("w_r")
            full = (q_tot.detach() < target) | (w_r == 0)
            w_tot = torch.where(full, 1.0, self.tot_weight_alpha).to(q_tot.dtype)
            # same value, gradient to Q_tot scaled by w_tot
            q_jt = w_tot * q_tot + (1 - w_tot) * q_tot.detach() + w_r * q_r
            diagnostics["w_tot_mean"] = masked_mean(w_tot, pad)
        td_error = q_jt - target
        losses = {
            "loss_td": masked_mean(td_error.pow(2), pad),
            "loss_central": self.central_loss(tensordict, target, pad),
        }
        if self.residual_sign == "penalty":
            losses["loss_residual_sign"] = self.residual_sign_coef * masked_mean(
                torch.relu(q_r).pow(2), pad
            )
        return self._finish(
            tensordict,
            td_error,
            losses,
            {
                "w_r_mean": masked_mean(joint.get("w_r"), pad),
                "q_r_mean": masked_mean(q_r, pad),
                "q_tot_mean": masked_mean(joint.get("q_tot"), pad),
                "q_jt_mean": masked_mean(q_jt, pad),
                "target_mean": masked_mean(target, pad),
                **diagnostics,
            },
        )
