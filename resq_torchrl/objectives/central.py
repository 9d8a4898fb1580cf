"""The central unconstrained ``Q*`` shared by Weighted QMIX and ResQ, written once.

``Q*`` mixes a separate set of agent utilities (``central_agent_network``) with an
unconstrained mixer (``central_mixer``). Both keep target parameters; the bootstrapped target
of these methods is ``y = r + gamma (1 - terminated) Q*^-(s', u')`` with ``u'`` the online
main agents' masked greedy next action, and ``Q*`` itself is regressed on ``y``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase
from torch import nn

from resq_torchrl.objectives.common import ValueFactorizationLoss, gather_chosen, masked_mean


def fresh_copy(network: TensorDictModuleBase) -> TensorDictModuleBase:
    """A copy of ``network`` with newly initialised parameters (a second, independent set)."""
    new = copy.deepcopy(network)
    for m in new.modules():
        if m is not new and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new


class CentralValueLoss(ValueFactorizationLoss):
    """Base of losses with a monotonic main ``Q_tot`` and a central ``Q*`` for targets.

    Args:
        agent_network: main agents (used to act), writing ``("agents", "action_value")``.
        mixer: monotonic torchrl ``Mixer`` for ``Q_tot``.
        central_mixer: unconstrained ``Mixer`` for ``Q*`` (``FeedForwardMixer``).

    Keyword Args:
        central_agent_network: utilities mixed into ``Q*``; default: a re-initialised copy of
            ``agent_network``.
        central_loss_coef: weight of ``loss_central``.
        gamma: discount.
        companions: further ``(name, agent_network, mixer)`` triples without target
            parameters (ResQ's residual), registered as ``<name>_agent_network`` and
            ``<name>_mixer`` between the main and the central networks.
    """

    agent_network: TensorDictModuleBase
    agent_network_params: TensorDictParams
    target_agent_network_params: TensorDictParams
    central_agent_network: TensorDictModuleBase
    central_agent_network_params: TensorDictParams
    target_central_agent_network_params: TensorDictParams
    mixer: nn.Module
    mixer_params: TensorDictParams
    target_mixer_params: TensorDictParams
    central_mixer: nn.Module
    central_mixer_params: TensorDictParams
    target_central_mixer_params: TensorDictParams

    def _extra_losses(self) -> list[str]:
        return ["loss_central"]

    def __init__(
        self,
        agent_network: TensorDictModuleBase,
        mixer: nn.Module,
        central_mixer: nn.Module,
        *,
        central_agent_network: TensorDictModuleBase | None = None,
        central_loss_coef: float = 1.0,
        gamma: float = 0.99,
        companions: Sequence[tuple[str, TensorDictModuleBase, nn.Module]] = (),
    ) -> None:
        super().__init__(gamma=gamma)
        if not central_loss_coef >= 0:
            raise ValueError(f"central_loss_coef must be >= 0, got {central_loss_coef}")
        self.central_loss_coef = central_loss_coef
        if central_agent_network is None:
            central_agent_network = fresh_copy(agent_network)
        # only the central Q* is bootstrapped from, so only it keeps target parameters
        self._register_agent_network("agent_network", agent_network, target=False)
        for name, network, _ in companions:
            self._register_agent_network(f"{name}_agent_network", network, target=False)
        self._register_agent_network("central_agent_network", central_agent_network, target=True)
        self._register_mixer("mixer", mixer, target=False)
        for name, _, companion_mixer in companions:
            self._register_mixer(f"{name}_mixer", companion_mixer, target=False)
        self._register_mixer("central_mixer", central_mixer, target=True)

    def central_q(
        self, tensordict: TensorDictBase, action: torch.Tensor | None = None, target: bool = False
    ) -> torch.Tensor:
        """``Q*`` ``[*B, 1]`` of ``action`` (default: the taken one) ``[*B, N]``, online or
        target parameters."""
        q, _ = self._agent_q("central_agent_network", tensordict, target=target)
        if action is None:
            action = tensordict.get(self.tensor_keys.action)
        return self._mix(
            "central_mixer",
            gather_chosen(q, action, check=False),
            tensordict.get(self.tensor_keys.state),
            target=target,
            valid=self._padding(tensordict),
        )

    def central_target(self, tensordict: TensorDictBase, next_greedy: torch.Tensor) -> torch.Tensor:
        """``y`` ``[*B, 1]`` from the target ``Q*`` at the online greedy next actions."""
        return self._target_value(tensordict, next_greedy, "central_agent_network", "central_mixer")

    def _joint_and_target(self, tensordict: TensorDictBase):
        """What every central-Q* loss starts with: the input check, the joint values (with
        the online greedy next action), the central target ``y`` and the padding mask."""
        self._check_input(tensordict)
        joint = self.joint_q(tensordict, with_next=True)
        target = self.central_target(tensordict, joint.get("next_greedy_action"))
        return joint, target, self._padding(tensordict)

    def central_loss(
        self, tensordict: TensorDictBase, target: torch.Tensor, pad: torch.Tensor | None
    ) -> torch.Tensor:
        """``central_loss_coef * mean (Q*(s, u) - y)^2`` over real samples."""
        return self.central_loss_coef * masked_mean(
            (self.central_q(tensordict) - target).pow(2), pad
        )
