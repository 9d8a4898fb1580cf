"""DDN (DFAC, Sun et al., ICML 2021): the joint return distribution is the sum of the agents'."""

from __future__ import annotations

from tensordict import TensorDictParams
from tensordict.nn import TensorDictModuleBase
from torchrl.modules.models.multiagent import VDNMixer

from resq_torchrl.modules.dist_mixers import QuantileMixer
from resq_torchrl.modules.layers import check_sizes
from resq_torchrl.objectives.distributional import DistributionalFactorizationLoss


class DDNLoss(DistributionalFactorizationLoss):
    """``Z_tot(tau) = sum_i Z_i(u_i, tau)`` (mean ``sum_i Q_i``, shape ``sum_i (Z_i - Q_i)``),
    trained with the quantile Huber loss on ``y = r + gamma (1 - terminated) Z_tot^-(s', u')``
    at ``K'`` target fractions (target agents, ``u'`` the online agents' greedy next action by
    the mean; TD(lambda) per fraction over ``[B, T]`` sequences when selected).

    Args:
        agent_network: IQN agents writing ``("agents", "action_value")`` ``[*B, N, A, K]``.

    Keyword Args:
        n_agents: ``N``.
        n_quantiles, n_target_quantiles, kappa, gamma: see
            :class:`~resq_torchrl.objectives.distributional.DistributionalFactorizationLoss`.

    Returns (``forward``): ``loss_td`` and the diagnostics ``td_error`` (mean
    ``|E[Z_tot] - E[y]|``), ``q_tot_mean``, ``target_mean``.
    """

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    mixer: QuantileMixer
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams

    def __init__(self, agent_network: TensorDictModuleBase, *, n_agents: int, **kwargs) -> None:
        check_sizes("DDNLoss", n_agents=n_agents)
        super().__init__(**kwargs)
        self._register_agent_network("agent_network", agent_network, target=True)
        mixer = QuantileMixer(VDNMixer(n_agents=n_agents, device=None))
        self._register_dist_mixer("mixer", mixer, target=True)
