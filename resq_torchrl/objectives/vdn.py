"""VDN (Sunehag et al. 2018): the joint value is the sum of the agents' utilities."""

from __future__ import annotations

from tensordict.nn import TensorDictModule
from torchrl.modules.models.multiagent import VDNMixer

from resq_torchrl.modules.layers import check_sizes
from resq_torchrl.objectives.qmix import QMIXLoss


class VDNLoss(QMIXLoss):
    """:class:`QMIXLoss` with torchrl's ``VDNMixer`` (``Q_tot = sum_i Q_i(u_i)``).

    Args:
        agent_network: ``TensorDictModule`` writing ``("agents", "action_value")`` ``[*B, N, A]``.

    Keyword Args:
        n_agents: number of agents ``N``.
        gamma: discount.
    """

    def __init__(
        self, agent_network: TensorDictModule, *, n_agents: int, gamma: float = 0.99
    ) -> None:
        check_sizes("VDNLoss", n_agents=n_agents)
        super().__init__(agent_network, VDNMixer(n_agents=n_agents, device=None), gamma=gamma)
