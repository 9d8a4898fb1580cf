"""Value-factorization losses as TorchRL ``LossModule``s, one per file, sharing ``common``."""

from resq_torchrl.objectives.central import CentralValueLoss
from resq_torchrl.objectives.common import (
    ValueFactorizationLoss,
    gather_chosen,
    is_greedy_joint_action,
    masked_greedy,
    masked_mean,
)
from resq_torchrl.objectives.ddn import DDNLoss
from resq_torchrl.objectives.distributional import (
    DistributionalFactorizationLoss,
    gather_quantiles,
    quantile_huber_loss,
)
from resq_torchrl.objectives.dmix import DMIXLoss
from resq_torchrl.objectives.qmix import QMIXLoss
from resq_torchrl.objectives.qplex import QPLEXLoss
from resq_torchrl.objectives.qtran import QTRANLoss
from resq_torchrl.objectives.resq import ResQLoss
from resq_torchrl.objectives.resz import ResZLoss
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
    "ResZLoss",
    "DDNLoss",
    "DMIXLoss",
    "DistributionalFactorizationLoss",
    "gather_quantiles",
    "quantile_huber_loss",
    "gather_chosen",
    "is_greedy_joint_action",
    "masked_greedy",
    "masked_mean",
]
