"""Weighted QMIX: CW and OW weights on a crafted batch, gradients, errors."""

import pytest
import torch

from resq_torchrl.modules import FeedForwardMixer, QMixer, VDNMixer, make_agent_qnet
from resq_torchrl.objectives import WeightedQMIXLoss

MAIN = [[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
CENTRAL = [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]
ALPHA = 0.25


def loss_for(weighting, make_table_qnet):
    return WeightedQMIXLoss(
        make_table_qnet(MAIN, by_obs=True),
        VDNMixer(2, device=None),
        VDNMixer(2, device=None),
        central_agent_network=make_table_qnet(CENTRAL, by_obs=True),
        weighting=weighting,
        alpha=ALPHA,
    )


# main greedy at the current state: (A, C); target Q*(s, (A, C)) = 1 + 6 = 7.
# terminal transitions, so y = r.   Q_tot = Q_1(u_1) + Q_2(u_2)
ACTIONS = [[0, 2], [1, 1], [1, 1], [2, 0]]
REWARDS = [0.0, 10.0, 5.0, -1.0]
Q_TOT = [3.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "weighting, expected",
    [
        # cw: greedy joint action, or y > Q*(s, u_bar) = 7
        ("cw", [1.0, 1.0, ALPHA, ALPHA]),
        # ow: Q_tot < y
        ("ow", [ALPHA, 1.0, 1.0, ALPHA]),
    ],
)
def test_weights_on_a_crafted_batch(weighting, expected, make_table_qnet, make_transition):
    loss = loss_for(weighting, make_table_qnet)
    with torch.no_grad():  # online central moves; CW must read the target copy (7, not 107)
        loss.central_agent_network_params["module", "table"].add_(100.0)
    td = make_transition(ACTIONS, REWARDS, [1, 1, 1, 1])
    joint = loss.joint_q(td)
    assert joint["greedy_action"].tolist() == [[0, 2]] * 4
    target = torch.tensor(REWARDS).unsqueeze(-1)
    w = loss.weights(td, joint, target)
    assert w.squeeze(-1).tolist() == expected
    out = loss(td)
    by_hand = sum(wi * (q - y) ** 2 for wi, q, y in zip(expected, Q_TOT, REWARDS, strict=True)) / 4
    torch.testing.assert_close(out["loss_td"], torch.tensor(by_hand))
    torch.testing.assert_close(out["w_mean"], torch.tensor(sum(expected) / 4))


def test_weights_carry_no_gradient_and_targets_stay_fixed(make_transition):
    """The weights the loss multiplies in are constants, loss_td never reaches the central
    Q*, and an optimizer step moves the online main and central networks but not the
    target copies of the central ones."""
    torch.manual_seed(0)
    loss = WeightedQMIXLoss(
        make_agent_qnet(1, 3, 2), QMixer(2, 1, 8, 16), FeedForwardMixer(2, 1, 16)
    )
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    used = []
    weights = loss.weights

    def spy(*args, **kwargs):
        w = weights(*args, **kwargs)
        used.append(w)
        return w

    loss.weights = spy  # the instance attribute shadows the method forward calls
    online = {
        name: getattr(loss, f"{name}_params").clone()
        for name in ("agent_network", "mixer", "central_agent_network", "central_mixer")
    }
    targets = {
        name: getattr(loss, f"target_{name}_params").clone()
        for name in ("central_agent_network", "central_mixer")
    }
    out = loss(td)
    assert len(used) == 1 and used[0].shape == (16, 1) and not used[0].requires_grad
    w = used[0]
    low = w == torch.tensor(0.1)  # the default alpha
    assert (low | (w == 1.0)).all() and low.any() and not low.all()
    # loss_td trains the main agents and mixer, never the central Q*
    central = [
        *loss.central_agent_network_params.values(True, True),
        *loss.central_mixer_params.values(True, True),
    ]
    grads = torch.autograd.grad(out["loss_td"], central, allow_unused=True, retain_graph=True)
    assert all(g is None or (g == 0).all() for g in grads)
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.1)
    (out["loss_td"] + out["loss_central"]).backward()
    optimizer.step()
    for name, before in online.items():
        assert not (getattr(loss, f"{name}_params") == before).all(), f"{name} did not move"
    for name, before in targets.items():
        after = getattr(loss, f"target_{name}_params")
        assert (after == before).all(), f"target {name} moved"
        assert all(not v.requires_grad and v.grad is None for v in after.values(True, True))


def test_bad_arguments_are_rejected(make_table_qnet):
    with pytest.raises(ValueError, match="weighting"):
        loss_for("xx", make_table_qnet)
    with pytest.raises(ValueError, match="alpha"):
        WeightedQMIXLoss(
            make_table_qnet(MAIN), VDNMixer(2, device=None), VDNMixer(2, device=None), alpha=2.0
        )
