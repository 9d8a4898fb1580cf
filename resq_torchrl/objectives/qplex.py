"""QPLEX (Wang et al., ICLR 2021): duplex dueling value factorization (DMAQ-general)."""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase, dispatch
from torch.nn.functional import one_hot

from resq_torchrl.modules.qplex import QPLEXMixer
from resq_torchrl.objectives.common import ValueFactorizationLoss, gather_chosen


class QPLEXLoss(ValueFactorizationLoss):
    """QPLEX's ``Q_tot`` (:class:`~resq_torchrl.modules.QPLEXMixer`) regressed on a double-Q
    target.

    ``Q_tot(s, u) = mixer(Q_i(u_i), max_a Q_i(a), one-hot u, s)`` with the max over each
    agent's available actions (without gradient, as in the paper's code). The target is
    ``y = r + gamma (1 - terminated) Q_tot^-(s', u')``: target agents and mixer, ``u'`` the
    online agents' masked greedy next action, the max taken over the target utilities'
    available next actions; TD(lambda) over ``[B, T]`` sequences when selected. By
    construction ``Q_tot`` is maximised by the agents' greedy joint action (IGM), whatever
    the parameters.

    Args:
        agent_network: agents writing ``("agents", "action_value")`` ``[*B, N, A]``.
        mixer: :class:`~resq_torchrl.modules.QPLEXMixer`.

    Keyword Args:
        gamma: discount.

    Returns (``forward``): ``loss_td`` and the diagnostics ``td_error``, ``q_tot_mean``,
    ``target_mean``.
    """

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    mixer: QPLEXMixer
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams

    def __init__(
        self, agent_network: TensorDictModuleBase, mixer: QPLEXMixer, *, gamma: float = 0.99
    ) -> None:
        super().__init__(gamma=gamma)
        self._register_agent_network("agent_network", agent_network, target=True)
        self._register_mixer("mixer", mixer, target=True, expected=QPLEXMixer)

    def _duplex(
        self,
        q: torch.Tensor,
        action: torch.Tensor,
        greedy: torch.Tensor,
        state: torch.Tensor,
        *,
        target: bool = False,
        check: bool = False,
    ) -> torch.Tensor:
        """``Q_tot`` ``[*B, 1]`` of ``action`` ``[*B, N]`` from utilities ``q`` ``[*B, N, A]``
        whose masked greedy action is ``greedy`` ``[*B, N]``; ``check`` validates ``action``
        (see :func:`gather_chosen`)."""
        mixer = self._checked_mixer("mixer", q.shape[-2], q.shape[-1])
        chosen = gather_chosen(q, action, check=check)
        max_q = gather_chosen(q.detach(), greedy, check=False)
        action_one_hot = one_hot(action.long(), mixer.n_actions)
        return self._bound("mixer", target)(chosen, max_q, action_one_hot, state)

    def _bootstrap_value(self, tensordict, next_greedy, agent, mixer) -> torch.Tensor:
        """``Q_tot^-(s', u')``; the advantages are taken against the target utilities' own
        masked maximum."""
        _, q_next = self._agent_q(
            "agent_network", tensordict, target=True, with_next=True, next_only=True
        )
        return self._duplex(
            q_next,
            next_greedy,
            self._next_greedy(tensordict, q_next),
            tensordict.get(("next", self.tensor_keys.state)),
            target=True,
        )

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        q, q_next = self._agent_q("agent_network", tensordict, with_next=with_next)
        action = tensordict.get(self.tensor_keys.action)
        greedy = self._greedy(tensordict, q)
        q_tot = self._duplex(q, action, greedy, tensordict.get(self.tensor_keys.state), check=True)
        out = TensorDict(
            {"action_value": q, "greedy_action": greedy, "q_tot": q_tot, "q_jt": q_tot},
            batch_size=tensordict.batch_size,
        )
        if with_next:
            out.set("next_greedy_action", self._next_greedy(tensordict, q_next))
        return out

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        return self._td_forward(tensordict)
