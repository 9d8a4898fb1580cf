"""Mixers of per-agent return distributions (DDN, DMIX, ResZ).

A distribution is represented by its values at ``K`` quantile fractions: the agents' chosen
quantiles are ``[*B, N, K]`` and a joint distribution is ``[*B, K]``; every mixer maps the
first to the second at the same fractions.

* :class:`QuantileMixer` applies a torchrl ``Mixer`` to each fraction with one set of
  weights: with ``VDNMixer`` it is DDN's sum, with ``QattenMixer`` the distributional
  attention mixer, with ``FeedForwardMixer`` the central ``Z*`` and ResZ's residual ``R``.
* :class:`DMIXMixer` is DMIX's mean-shape decomposition: a monotonic mixer of the agents'
  means plus the sum of their centred quantiles.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrl.modules.models.multiagent import Mixer


class DistributionalMixer(nn.Module):
    """Base: ``forward(z [*B, N, K], state [*B, S]) -> [*B, K]``."""

    n_agents: int
    needs_state: bool

    def _check(self, z: torch.Tensor, state: torch.Tensor | None) -> None:
        if z.dim() < 2 or z.shape[-2] != self.n_agents:
            raise ValueError(
                f"{type(self).__name__} expects agent quantiles [*B, {self.n_agents}, K], got "
                f"{tuple(z.shape)}"
            )
        if self.needs_state and (state is None or state.shape[:-1] != z.shape[:-2]):
            raise ValueError(
                f"{type(self).__name__} expects a state [*B, S] with *B = "
                f"{tuple(z.shape[:-2])}, got {None if state is None else tuple(state.shape)}"
            )


class QuantileMixer(DistributionalMixer):
    """A torchrl ``Mixer`` applied to every quantile fraction with shared weights.

    ``Z(s, u)(tau_k) = mixer([z_1(tau_k), ..., z_N(tau_k)], s)``.

    A mixer with a ``mix_fractions(q [*B, K, N], state [*B, S]) -> [*B, K]`` method (this
    package's ``QMixer``, ``QattenMixer`` and ``FeedForwardMixer``) is given the ``K`` sets
    at once and computes what depends on the state alone once per state; any other torchrl
    ``Mixer`` is called on the state repeated ``K`` times.

    Shapes: ``z [*B, N, K]``, ``state [*B, S]`` -> ``[*B, K]``.

    Example:
        >>> import torch
        >>> from torchrl.modules.models.multiagent import VDNMixer
        >>> ddn = QuantileMixer(VDNMixer(n_agents=2, device="cpu"))
        >>> ddn(torch.ones(4, 2, 8), None).shape
        torch.Size([4, 8])
    """

    def __init__(self, mixer: Mixer) -> None:
        super().__init__()
        if not isinstance(mixer, Mixer):
            raise TypeError(f"QuantileMixer wraps a torchrl Mixer, got {type(mixer).__name__}")
        self.mixer = mixer
        self.n_agents = mixer.n_agents
        self.needs_state = mixer.needs_state

    def forward(self, z: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        self._check(z, state)
        k = z.shape[-1]
        if self.needs_state and hasattr(self.mixer, "mix_fractions"):
            # the state's share of the mixer once per state, not once per fraction
            # (QMixer, QattenMixer, FeedForwardMixer; tests/test_distributional.py checks it
            # against the mixer applied fraction by fraction)
            return self.mixer.mix_fractions(z.transpose(-1, -2), state)
        per_fraction = z.transpose(-1, -2).unsqueeze(-1)  # [*B, K, N, 1]
        if not self.needs_state:
            return self.mixer(per_fraction).squeeze(-1)
        state = state.unsqueeze(-2).expand(*state.shape[:-1], k, state.shape[-1])
        return self.mixer(per_fraction, state).squeeze(-1)


class DMIXMixer(DistributionalMixer):
    """DMIX (Sun et al. 2021): ``Z = M(E[Z_1], ..., E[Z_N] | s) + sum_i (Z_i - E[Z_i])``.

    ``M`` is a monotonic torchrl ``Mixer`` (``QMixer``); the shape term has mean 0 over the
    fractions, so ``E[Z]`` (estimated by the mean over the ``K`` fractions) is ``M`` of the
    agents' means.

    Shapes: ``z [*B, N, K]``, ``state [*B, S]`` -> ``[*B, K]``.
    """

    def __init__(self, mean_mixer: Mixer) -> None:
        super().__init__()
        if not isinstance(mean_mixer, Mixer):
            raise TypeError(f"DMIXMixer needs a torchrl Mixer, got {type(mean_mixer).__name__}")
        self.mean_mixer = mean_mixer
        self.n_agents = mean_mixer.n_agents
        self.needs_state = mean_mixer.needs_state

    def decompose(
        self, z: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Z_mean [*B, 1], Z_shape [*B, K])``."""
        self._check(z, state)
        means = z.mean(-1, keepdim=True)  # [*B, N, 1]
        z_mean = self.mean_mixer(means, state) if self.needs_state else self.mean_mixer(means)
        return z_mean, (z - means).sum(-2)

    def forward(self, z: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        z_mean, z_shape = self.decompose(z, state)
        return z_mean + z_shape
