"""Networks: per-agent utility networks and mixers."""

from resq_torchrl.modules.agents import AgentMLP, make_agent_qnet
from resq_torchrl.modules.dist_mixers import DistributionalMixer, DMIXMixer, QuantileMixer
from resq_torchrl.modules.iqn import IQNAgentMLP, MultiAgentIQN, QuantileHead
from resq_torchrl.modules.mixers import FeedForwardMixer, QattenMixer, QMixer, VDNMixer
from resq_torchrl.modules.qplex import QPLEXMixer
from resq_torchrl.modules.qtran import QTranJointNetwork
from resq_torchrl.modules.rnn import AgentGRU, MultiAgentGRU

__all__ = [
    "AgentMLP",
    "AgentGRU",
    "MultiAgentGRU",
    "MultiAgentIQN",
    "IQNAgentMLP",
    "QuantileHead",
    "DistributionalMixer",
    "DMIXMixer",
    "QuantileMixer",
    "make_agent_qnet",
    "FeedForwardMixer",
    "QMixer",
    "QattenMixer",
    "QPLEXMixer",
    "QTranJointNetwork",
    "VDNMixer",
]
