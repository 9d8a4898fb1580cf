"""QTRAN-base (Son et al., ICML 2019): a joint ``Q_jt`` that agents' sums must track."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey, unravel_key
from torch.nn.functional import one_hot

from resq_torchrl.modules.qtran import QTranJointNetwork
from resq_torchrl.objectives.common import ValueFactorizationLoss, gather_chosen, masked_mean


class QTRANLoss(ValueFactorizationLoss):
    """QTRAN-base: ``L = L_td + opt_coef L_opt + nopt_coef L_nopt``.

    With ``Q_i`` the agents' utilities, ``u_bar`` their masked greedy joint action,
    ``Q'(s, u) = sum_i Q_i(u_i)`` the factorized value, ``Q_jt`` and ``V_jt`` the joint
    networks (:class:`~resq_torchrl.modules.QTranJointNetwork`, reading the agents' features
    at ``tensor_keys.agent_features``) and ``sg`` the stop-gradient:

    * ``L_td = mean (Q_jt(s, u) - y)^2``, ``y = r + gamma (1 - terminated) Q_jt^-(s', u')``
      with target agents and joint network and ``u'`` the online agents' masked greedy next
      action (TD(lambda) over ``[B, T]`` sequences when selected);
    * ``L_opt = mean (Q'(s, u_bar) - sg Q_jt(s, u_bar) + V_jt(s))^2`` (the condition at the
      greedy action holds with equality);
    * ``L_nopt = mean min(Q'(s, u) - sg Q_jt(s, u) + V_jt(s), 0)^2`` (at every other action
      ``Q'`` may not fall below ``Q_jt - V_jt``).

    The joint value of the method is ``q_jt = Q_jt(s, u)``; ``q_tot = Q'(s, u)`` is what the
    agents act on. Unlike pymarl's implementation, the agents' features are read per time
    step and agent in place (pymarl's stacking of hidden states mixes the time and agent
    axes).

    Args:
        agent_network: agents writing ``("agents", "action_value")`` ``[*B, N, A]`` and their
            features ``tensor_keys.agent_features`` ``[*B, N, H]`` (build it with
            ``features_key=("agents", "features")``).
        joint_network: :class:`~resq_torchrl.modules.QTranJointNetwork`.

    Keyword Args:
        opt_coef: ``lambda_opt`` (paper: 1).
        nopt_coef: ``lambda_nopt`` (paper: 0.1).
        gamma: discount.

    Returns (``forward``): ``loss_td``, ``loss_opt``, ``loss_nopt`` (each already multiplied
    by its coefficient) and the diagnostics ``td_error``, ``q_jt_mean``, ``q_tot_mean``,
    ``v_mean``, ``target_mean``.
    """

    @dataclass
    class _AcceptedKeys(ValueFactorizationLoss._AcceptedKeys):
        """Keys of :class:`ValueFactorizationLoss` plus

        Attributes:
            agent_features: per-agent features ``[*B, N, H]`` written by the agent network.
                Default ``("agents", "features")``.
        """

        agent_features: NestedKey = ("agents", "features")

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    joint_network: QTranJointNetwork
    joint_network_params: TensorDictParams
    target_joint_network_params: TensorDictParams

    def _extra_losses(self) -> list[str]:
        return ["loss_opt", "loss_nopt"]

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        joint_network: QTranJointNetwork,
        *,
        opt_coef: float = 1.0,
        nopt_coef: float = 0.1,
        gamma: float = 0.99,
    ) -> None:
        super().__init__(gamma=gamma)
        if opt_coef < 0 or nopt_coef < 0:
            raise ValueError(f"opt_coef and nopt_coef must be >= 0, got {opt_coef} and {nopt_coef}")
        self.opt_coef, self.nopt_coef = opt_coef, nopt_coef
        self._register_agent_network("agent_network", agent_network, target=True)
        self._register_mixer(
            "joint_network", joint_network, target=True, expected=QTranJointNetwork
        )
        self._check_features_key()

    def _check_features_key(self) -> None:
        key = unravel_key(self.tensor_keys.agent_features)
        if key not in {unravel_key(k) for k in self.agent_network.out_keys}:
            raise ValueError(
                f"QTRANLoss reads the agents' features at {key!r}, which the agent network "
                f"does not write (its out_keys: {self.agent_network.out_keys}); build it with "
                f"features_key={key!r} or point loss.set_keys(agent_features=...) at its key"
            )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if "agent_features" in kwargs:
            self._check_features_key()

    def _joint(
        self,
        features: torch.Tensor,
        action: torch.Tensor,
        state: torch.Tensor,
        *,
        target: bool = False,
        n_actions: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Q_jt(s, u), V_jt(s))`` ``[*B, 1]`` for features ``[*B, N, H]`` and actions
        ``[*B, N]``; ``n_actions``: the agents' action count, checked against the network's."""
        net = self._checked_mixer("joint_network", features.shape[-2], n_actions)
        action_one_hot = one_hot(action.long(), net.n_actions)
        return self._bound("joint_network", target)(features, action_one_hot, state)

    def _bootstrap_value(self, tensordict, next_greedy, agent, mixer) -> torch.Tensor:
        """``Q_jt^-(s', u')`` from the target agents' features at ``s'``."""
        _, out_next = self._agent_run(
            "agent_network", tensordict, target=True, with_next=True, next_only=True
        )
        q_jt, _ = self._joint(
            out_next.get(self.tensor_keys.agent_features),
            next_greedy,
            tensordict.get(("next", self.tensor_keys.state)),
            target=True,
        )
        return q_jt

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        """See :meth:`ValueFactorizationLoss.joint_q`; adds ``features`` ``[*B, N, H]`` and
        ``v`` ``[*B, 1]`` (``V_jt(s)``)."""
        out, out_next = self._agent_run("agent_network", tensordict, with_next=with_next)
        q = out.get(self.tensor_keys.action_value)
        features = out.get(self.tensor_keys.agent_features)
        action = tensordict.get(self.tensor_keys.action)
        q_tot = gather_chosen(q, action).sum(-2)
        q_jt, v = self._joint(
            features, action, tensordict.get(self.tensor_keys.state), n_actions=q.shape[-1]
        )
        joint = TensorDict(
            {
                "action_value": q,
                "features": features,
                "greedy_action": self._greedy(tensordict, q),
                "q_tot": q_tot,
                "q_jt": q_jt,
                "v": v,
            },
            batch_size=tensordict.batch_size,
        )
        if with_next:
            # out_next is None with one_step (no next pass)
            q_next = None if out_next is None else out_next.get(self.tensor_keys.action_value)
            joint.set("next_greedy_action", self._next_greedy(tensordict, q_next))
        return joint

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        self._check_input(tensordict)
        joint = self.joint_q(tensordict, with_next=True)
        target = self._target_value(
            tensordict, joint.get("next_greedy_action"), "agent_network", "joint_network"
        )
        pad = self._padding(tensordict)
        q_jt, q_tot, v = joint.get("q_jt"), joint.get("q_tot"), joint.get("v")
        greedy = joint.get("greedy_action")
        td_error = q_jt - target
        with torch.no_grad():
            q_jt_greedy, _ = self._joint(
                joint.get("features"), greedy, tensordict.get(self.tensor_keys.state)
            )
        q_greedy_sum = gather_chosen(joint.get("action_value"), greedy, check=False).sum(-2)
        opt_error = q_greedy_sum - q_jt_greedy + v
        nopt_error = (q_tot - q_jt.detach() + v).clamp(max=0.0)
        return self._finish(
            tensordict,
            td_error,
            {
                "loss_td": masked_mean(td_error.pow(2), pad),
                "loss_opt": self.opt_coef * masked_mean(opt_error.pow(2), pad),
                "loss_nopt": self.nopt_coef * masked_mean(nopt_error.pow(2), pad),
            },
            {
                "q_jt_mean": masked_mean(q_jt, pad),
                "q_tot_mean": masked_mean(q_tot, pad),
                "v_mean": masked_mean(v, pad),
                "target_mean": masked_mean(target, pad),
            },
        )
