"""DMIX (DFAC, Sun et al., ICML 2021): QMIX over the agents' means plus their summed shapes."""

from __future__ import annotations

from tensordict import TensorDictParams
from tensordict.nn import TensorDictModuleBase

from resq_torchrl.modules.dist_mixers import DMIXMixer
from resq_torchrl.objectives.distributional import DistributionalFactorizationLoss


class DMIXLoss(DistributionalFactorizationLoss):
    """``Z_tot = M(E[Z_1], ..., E[Z_N] | s) + sum_i (Z_i - E[Z_i])`` with a monotonic ``M``
    (:class:`~resq_torchrl.modules.DMIXMixer` over a ``QMixer``), trained with the quantile
    Huber loss on ``y = r + gamma (1 - terminated) Z_tot^-(s', u')`` at ``K'`` target
    fractions (target agents and mixer, ``u'`` the online agents' greedy next action by the
    mean; TD(lambda) per fraction over ``[B, T]`` sequences when selected).

    Args:
        agent_network: IQN agents writing ``("agents", "action_value")`` ``[*B, N, A, K]``.
        mixer: :class:`~resq_torchrl.modules.DMIXMixer`.

    Keyword Args:
        n_quantiles, n_target_quantiles, kappa, gamma: see
            :class:`~resq_torchrl.objectives.distributional.DistributionalFactorizationLoss`.

    Returns (``forward``): ``loss_td`` and the diagnostics ``td_error``, ``q_tot_mean``,
    ``target_mean``.
    """

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    mixer: DMIXMixer
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams

    def __init__(self, agent_network: TensorDictModuleBase, mixer: DMIXMixer, **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(mixer, DMIXMixer):
            raise TypeError(f"DMIXLoss needs a DMIXMixer, got {type(mixer).__name__}")
        self._register_agent_network("agent_network", agent_network, target=True)
        self._register_dist_mixer("mixer", mixer, target=True)
