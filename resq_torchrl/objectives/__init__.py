"""Value-factorization losses as TorchRL ``LossModule``s, one per file, sharing ``common``."""

from resq_torchrl.objectives.central import CentralValueLoss
from resq_torchrl.objectives.common import (
    ValueFactorizationLoss,
    gather_chosen,
    is_greedy_joint_action,
    masked_greedy,
    masked_mean,
)
from resq_torchrl.objectives.qmix import QMIXLoss
from resq_torchrl.objectives.qplex import QPLEXLoss
from resq_torchrl.objectives.qtran import QTRANLoss
from resq_torchrl.objectives.resq import ResQLoss
from resq_torchrl.objectives.vdn import VDNLoss
from resq_torchrl.objectives.wqmix import WeightedQMIXLoss

__all__ = [
    "ValueFactorizationLoss",
    "CentralValueLoss",
    "WeightedQMIXLoss",
    "QMIXLoss",
    "QPLEXLoss",
    "QTRANLoss",
    "VDNLoss",
    "ResQLoss",
    "gather_chosen",
    "is_greedy_joint_action",
    "masked_greedy",
    "masked_mean",
]
