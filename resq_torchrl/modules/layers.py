"""Small building blocks shared by the networks."""

from __future__ import annotations

from torch import nn
from torchrl.modules import MLP


def mlp(in_dim: int, embed: int, out_dim: int, layers: int, device) -> MLP:
    """torchrl's ``MLP`` with ``layers`` linear layers (``layers - 1`` hidden of ``embed``)."""
    return MLP(
        in_features=in_dim,
        out_features=out_dim,
        num_cells=[embed] * (layers - 1),
        activation_class=nn.ReLU,
        device=device,
    )
