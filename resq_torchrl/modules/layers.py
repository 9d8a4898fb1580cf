"""Small building blocks shared by the networks."""

from __future__ import annotations

from torch import nn
from torchrl.modules import MLP


def check_sizes(owner: str, **sizes) -> None:
    """Raise ``ValueError("<owner> needs positive sizes, got a=1, b=0")`` when a size is
    below 1: a layer of no units trains nothing in silence, a negative one fails deep
    inside torch. The one size check of the networks and mixers."""
    if any(size is None or size < 1 for size in sizes.values()):
        got = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"{owner} needs positive sizes, got {got}")


def mlp(in_dim: int, embed: int, out_dim: int, layers: int, device) -> MLP:
    """torchrl's ``MLP`` with ``layers`` linear layers (``layers - 1`` hidden of ``embed``)."""
    return MLP(
        in_features=in_dim,
        out_features=out_dim,
        num_cells=[embed] * (layers - 1),
        activation_class=nn.ReLU,
        device=device,
    )
