"""Weighted QMIX (Rashid et al., NeurIPS 2020): CW-QMIX and OW-QMIX."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from torch import nn

from resq_torchrl.objectives.central import CentralValueLoss
from resq_torchrl.objectives.common import is_greedy_joint_action, masked_mean


class WeightedQMIXLoss(CentralValueLoss):
    """QMIX's ``Q_tot`` regressed with per-sample weights on the target of a central ``Q*``.

    ``loss_td = mean w (Q_tot(s, u) - y)^2`` and ``loss_central = mean (Q*(s, u) - y)^2``,
    ``y = r + gamma (1 - terminated) Q*^-(s', u')`` with ``Q*^-`` the target central
    parameters and ``u'`` the online main agents' masked greedy next action. The weight
    carries no gradient:

    * ``weighting="cw"`` (centrally weighted): ``w = 1`` if ``u`` is the agents' greedy joint
      action ``u_bar`` or ``y > Q*^-(s, u_bar)``, else ``alpha``;
    * ``weighting="ow"`` (optimistically weighted): ``w = 1`` if ``Q_tot(s, u) < y``, else
      ``alpha``.

    Diagnostics: ``td_error`` (mean ``|Q_tot - y|``), ``w_mean``, ``q_tot_mean``,
    ``target_mean``.

    Args:
        agent_network: main agents, writing ``("agents", "action_value")`` ``[*B, N, A]``.
        mixer: monotonic torchrl ``Mixer`` for ``Q_tot`` (``QMixer``).
        central_mixer: unconstrained ``Mixer`` for ``Q*`` (``FeedForwardMixer``).

    Keyword Args:
        weighting: ``"cw"`` or ``"ow"``.
        alpha: weight of the down-weighted samples, in ``[0, 1]`` (default 0.1).
        central_agent_network: utilities mixed into ``Q*``; default: a re-initialised copy.
        central_loss_coef: weight of ``loss_central``.
        gamma: discount.
    """

    WEIGHTINGS = ("cw", "ow")

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        mixer: nn.Module,
        central_mixer: nn.Module,
        *,
        weighting: str = "cw",
        alpha: float = 0.1,
        central_agent_network: TensorDictModuleBase | None = None,
        central_loss_coef: float = 1.0,
        gamma: float = 0.99,
    ) -> None:
        if weighting not in self.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {self.WEIGHTINGS}, got {weighting!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        super().__init__(
            agent_network,
            mixer,
            central_mixer,
            central_agent_network=central_agent_network,
            central_loss_coef=central_loss_coef,
            gamma=gamma,
        )
        self.weighting, self.alpha = weighting, alpha

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        out = self._main_joint(tensordict, with_next)
        out.set("q_jt", out.get("q_tot"))
        return out

    @torch.no_grad()
    def weights(
        self, tensordict: TensorDictBase, joint: TensorDictBase, target: torch.Tensor
    ) -> torch.Tensor:
        """``w`` ``[*B, 1]`` of each sample (see the class docstring)."""
        q_tot = joint.get("q_tot")
        if self.weighting == "ow":
            full = q_tot < target
        else:
            greedy = joint.get("greedy_action")
            action = tensordict.get(self.tensor_keys.action)
            best = self.central_q(tensordict, action=greedy, target=True)
            full = is_greedy_joint_action(action, greedy) | (target > best)
        return torch.where(full, 1.0, self.alpha).to(q_tot.dtype)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        joint, target, pad = self._joint_and_target(tensordict)
        q_tot = joint.get("q_tot")
        td_error = q_tot - target
        w = self.weights(tensordict, joint, target)
        return self._finish(
            tensordict,
            td_error,
            {
                "loss_td": masked_mean(w * td_error.pow(2), pad),
                "loss_central": self.central_loss(tensordict, target, pad),
            },
            {
                "w_mean": masked_mean(w, pad),
                "q_tot_mean": masked_mean(q_tot, pad),
                "target_mean": masked_mean(target, pad),
            },
        )
