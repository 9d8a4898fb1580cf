"""QPLEX: Q_tot on a tiny hand-built case, IGM, gradient paths, targets, masks, errors."""

import itertools

import pytest
import torch
from torch import nn

from resq_torchrl.modules import QPLEXMixer, make_agent_qnet
from resq_torchrl.objectives import QPLEXLoss

# current state: Q_1 = (1, 0, 3), Q_2 = (2, 5, 0); next state: Q_1 = (0, 4, 0), Q_2 = (1, 0, 2)
MAIN = [[[1.0, 0.0, 3.0], [2.0, 5.0, 0.0]], [[0.0, 4.0, 0.0], [1.0, 0.0, 2.0]]]


def simple_mixer(w=(2.0, 1.0), v=(0.5, -1.0), key=2.0, agents=0.0, action=0.0):
    """One kernel, every weight zero: w_i = |w|, v_i = v, lambda_i = |key| s(agents) s(action)."""
    mixer = QPLEXMixer(n_agents=2, n_actions=3, state_dim=1, n_kernels=1, adv_hypernet_layers=1)
    with torch.no_grad():
        for p in mixer.parameters():
            p.zero_()
        mixer.hyper_w[-1].bias.copy_(torch.tensor(w))
        mixer.hyper_v[-1].bias.copy_(torch.tensor(v))
        mixer.key_extractor.biases[-1].fill_(key)
        mixer.agents_extractor.biases[-1].fill_(agents)
        mixer.action_extractor.biases[-1].fill_(action)
    return mixer


def test_q_tot_by_hand():
    mixer = simple_mixer()
    chosen = torch.tensor([[[1.0], [2.0]]])  # action (A, A)
    max_q = torch.tensor([[[3.0], [5.0]]])
    one_hot = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]]])
    # Q'_1: 2*1 + 0.5 = 2.5, max 6.5, A_1 = -4; Q'_2: 2 - 1 = 1, max 4, A_2 = -3
    # lambda = 2 * 0.5 * 0.5 = 0.5;  Q_tot = 6.5 + 4 + 0.5 * (-7) = 7
    q_tot = mixer(chosen, max_q, one_hot, torch.zeros(1, 1))
    torch.testing.assert_close(q_tot, torch.tensor([[7.0]]))
    lam = mixer.lambdas(torch.zeros(1, 1), one_hot)
    torch.testing.assert_close(lam, torch.full((1, 2, 1), 0.5))


def test_gradient_paths_of_the_duplex_value():
    """dQ_tot/dQ_i(u_i) = w_i (the value path); lambda learns only through the advantages."""
    mixer = simple_mixer()
    chosen = torch.tensor([[[1.0], [2.0]]], requires_grad=True)
    q_tot = mixer(chosen, torch.tensor([[[3.0], [5.0]]]), torch.zeros(1, 2, 3), torch.zeros(1, 1))
    (g_chosen,) = torch.autograd.grad(q_tot.sum(), chosen, retain_graph=True)
    torch.testing.assert_close(g_chosen, torch.tensor([[[2.0], [1.0]]]))
    key_bias = mixer.key_extractor.biases[-1]
    (g_key,) = torch.autograd.grad(q_tot.sum(), key_bias)
    # d/dkey of |key| * 0.25 * (A_1 + A_2) = 0.25 * (-7)
    torch.testing.assert_close(g_key, torch.tensor([[-1.75]]))


def test_kernel_mlp_equals_separate_mlps():
    from resq_torchrl.modules.qplex import KernelMLP

    torch.manual_seed(0)
    kernels = KernelMLP(3, in_dim=4, embed=5, out_dim=2, layers=3)
    x = torch.randn(7, 4)
    out = kernels(x)
    assert out.shape == (7, 3, 2)
    for k in range(3):
        h = x
        for i, (w, b) in enumerate(zip(kernels.weights, kernels.biases, strict=True)):
            h = h @ w[k] + b[k]
            if i < 2:
                h = torch.relu(h)
        torch.testing.assert_close(out[:, k], h)


def test_greedy_joint_action_maximises_q_tot_for_random_parameters():
    """IGM holds by construction: advantages <= 0 and lambda > 0."""
    torch.manual_seed(0)
    for _ in range(5):
        mixer = QPLEXMixer(3, 4, state_dim=5, n_kernels=3)
        q = torch.randn(1, 3, 4)
        state = torch.randn(1, 5)
        greedy = q.argmax(-1)
        best = q.max(-1, keepdim=True).values
        values = {}
        for u in itertools.product(range(4), repeat=3):
            u = torch.tensor([u])
            chosen = q.gather(-1, u.unsqueeze(-1))
            values[tuple(u[0].tolist())] = mixer(chosen, best, nn.functional.one_hot(u, 4), state)
        assert max(values, key=lambda k: values[k].item()) == tuple(greedy[0].tolist())


def table_loss(make_table_qnet, **kwargs):
    return QPLEXLoss(make_table_qnet(MAIN, by_obs=True), simple_mixer(), **kwargs)


def test_loss_by_hand_with_a_mask(make_table_qnet, make_transition):
    loss = table_loss(make_table_qnet)
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    mask[0, 0, 2] = False  # agent 1's best action C is unavailable: its max is A (1.0)
    td = make_transition([[0, 0]], [4.0], [1], mask=mask)
    joint = loss.joint_q(td)
    assert joint["greedy_action"].tolist() == [[0, 1]]
    # Q'_1(A) = 2.5 = max, A_1 = 0; Q'_2(A) = 1, max 4, A_2 = -3; Q_tot = 2.5 + 4 + 0.5 * -3
    torch.testing.assert_close(joint["q_tot"], torch.tensor([[5.0]]))
    out = loss(td)
    torch.testing.assert_close(out["loss_td"], torch.tensor(1.0))  # (5 - 4)^2, terminal


def test_bootstrap_uses_target_networks_and_the_target_max(make_table_qnet, make_transition):
    loss = table_loss(make_table_qnet, gamma=0.5)
    with torch.no_grad():  # online parameters move; the target must not
        loss.agent_network_params["module", "table"].add_(10.0)
        loss.mixer_params["hyper_v", "2", "bias"].add_(100.0)
    next_mask = torch.ones(1, 2, 3, dtype=torch.bool)
    next_mask[0, 1, 2] = False  # agent 2 may not take C at s'
    td = make_transition([[0, 0]], [1.0], [0], next_mask=next_mask)
    joint = loss.joint_q(td, with_next=True)
    # online greedy at s' with the mask: agent 1 B (4 + 10), agent 2 A (1 + 10)
    assert joint["next_greedy_action"].tolist() == [[1, 0]]
    # target at s' and (B, A): Q'_1 = 2*4 + .5 = 8.5 = max; Q'_2 = 1 - 1 = 0 = its masked max
    target = 1.0 + 0.5 * (8.5 + 0.0)
    # online at s: utilities + 10, v + 100: Q'_1(A) = 2*11 + 100.5, Q'_2(A) = 12 + 99
    # A_1 = 2 * (11 - 13) = -4, A_2 = 1 * (12 - 15) = -3
    q_tot = (2 * 13 + 100.5) + (15 + 99) + 0.5 * (-7)
    out = loss(td)
    torch.testing.assert_close(out["loss_td"], torch.tensor((q_tot - target) ** 2))
    before = loss.target_mixer_params.clone()
    online = loss.mixer_params.clone()
    out["loss_td"].backward()
    torch.optim.SGD(loss.parameters(), lr=1.0).step()  # a step over all the loss trains
    assert (loss.target_mixer_params == before).all()
    assert not (loss.mixer_params == online).all()  # while the online mixer moved
    for targets in (loss.target_mixer_params, loss.target_agent_network_params):
        assert all(not p.requires_grad and p.grad is None for p in targets.values(True, True))


def test_trains_from_a_learned_agent_network(make_transition):
    torch.manual_seed(0)
    loss = QPLEXLoss(make_agent_qnet(1, 3, 2), QPLEXMixer(2, 3, 1))
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    out = loss(td)
    out["loss_td"].backward()
    grads = [p.grad for p in loss.agent_network_params.values(True, True)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_errors():
    with pytest.raises(TypeError, match="QPLEXMixer"):
        QPLEXLoss(make_agent_qnet(1, 3, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="positive"):
        QPLEXMixer(2, 3, 1, n_kernels=0)
    mixer = QPLEXMixer(2, 3, 1)
    with pytest.raises(ValueError, match="chosen"):
        mixer(torch.zeros(4, 3, 1), torch.zeros(4, 2, 1), torch.zeros(4, 2, 3), torch.zeros(4, 1))
    loss = QPLEXLoss(make_agent_qnet(1, 3, 3), QPLEXMixer(2, 3, 1))
    from tests.conftest import transition

    with pytest.raises(ValueError, match="agents"):
        loss(transition([[0, 0, 0]], [0.0], [1]))
    # a mixer built for another action count: it ran (more actions) or failed in one_hot
    for n_actions in (2, 4):
        loss = QPLEXLoss(make_agent_qnet(1, 3, 2), QPLEXMixer(2, n_actions, 1))
        with pytest.raises(ValueError, match=f"have 3 actions but mixer was built for {n_actions}"):
            loss(transition([[0, 0]], [0.0], [1]))
