"""QMIX (Rashid et al. 2018): a monotonic mixer of per-agent utilities, double-Q TD targets."""

from __future__ import annotations

from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from torch import nn

from resq_torchrl.objectives.common import ValueFactorizationLoss


class QMIXLoss(ValueFactorizationLoss):
    """``Q_tot = mixer(Q_1(u_1), ..., Q_N(u_N), s)`` regressed on a double-Q target.

    The target is ``r + gamma (1 - terminated) Q_tot^-(s', u')`` where ``Q_tot^-`` uses the
    target parameters of the agents and the mixer and ``u'`` is the online agents' masked
    greedy action.

    Args:
        agent_network: ``TensorDictModule`` writing ``("agents", "action_value")``
            ``[*B, N, A]`` from its observation keys.
        mixer: a torchrl ``Mixer`` (``[*B, N, 1]``, ``[*B, S]`` -> ``[*B, 1]``), e.g.
            :class:`resq_torchrl.modules.QMixer`.

    Keyword Args:
        gamma: discount.

    Returns (``forward``): ``loss_td`` and the diagnostics ``td_error`` (mean ``|Q_tot - y|``),
    ``q_tot_mean``, ``target_mean``.

    Example:
        >>> from resq_torchrl.modules import QMixer, make_agent_qnet
        >>> from resq_torchrl.envs import MatrixGameEnv
        >>> env = MatrixGameEnv(batch_size=[8])
        >>> loss = QMIXLoss(make_agent_qnet(1, 3, 2), QMixer(n_agents=2, state_dim=1))
        >>> sorted(loss(env.rand_step(env.reset())).keys())
        ['loss_td', 'q_tot_mean', 'target_mean', 'td_error']
    """

    agent_network: TensorDictModule
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    mixer: nn.Module
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams

    def __init__(
        self, agent_network: TensorDictModule, mixer: nn.Module, *, gamma: float = 0.99
    ) -> None:
        super().__init__(gamma=gamma)
        self._register_agent_network("agent_network", agent_network, target=True)
        self._register_mixer("mixer", mixer, target=True)

    def joint_q(self, tensordict: TensorDictBase, with_next: bool = False) -> TensorDict:
        out = self._main_joint(tensordict, with_next)
        out.set("q_jt", out.get("q_tot"))
        return out

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        return self._td_forward(tensordict)
