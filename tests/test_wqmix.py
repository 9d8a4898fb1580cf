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
    torch.manual_seed(0)
    loss = WeightedQMIXLoss(
        make_agent_qnet(1, 3, 2), QMixer(2, 1, 8, 16), FeedForwardMixer(2, 1, 16)
    )
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    before = loss.target_central_mixer_params.clone()
    out = loss(td)
    (out["loss_td"] + out["loss_central"]).backward()
    assert (loss.target_central_mixer_params == before).all()
    assert all(not v.requires_grad for v in loss.target_central_mixer_params.values(True, True))
    # loss_td trains the main agents and mixer, never the central Q*
    central = list(loss.central_mixer_params.values(True, True))
    grads = torch.autograd.grad(loss(td)["loss_td"], central, allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads)


def test_bad_arguments_are_rejected(make_table_qnet):
    with pytest.raises(ValueError, match="weighting"):
        loss_for("xx", make_table_qnet)
    with pytest.raises(ValueError, match="alpha"):
        WeightedQMIXLoss(
            make_table_qnet(MAIN), VDNMixer(2, device=None), VDNMixer(2, device=None), alpha=2.0
        )
