"""QTRAN-base: the three loss terms by hand, gradient paths, targets, masks, errors."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn

from resq_torchrl.modules import QTranJointNetwork, make_agent_qnet
from resq_torchrl.objectives import QTRANLoss
from tests.conftest import TableQ

PAYOFF = [[8.0, -12.0, -12.0], [-12.0, 0.0, 0.0], [-12.0, 0.0, 7.9]]
MAIN = [[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]]
V = 1.5


class TableJoint(QTranJointNetwork):
    """Stand-in joint network: ``Q_jt(s, u) = table[u_1, u_2]`` (+ 100 at the next state, so
    current and next values differ) and ``V_jt(s) = v``."""

    def __init__(self, table, v):
        super().__init__(n_agents=2, n_actions=3, feature_dim=1, state_dim=1)
        self.table = nn.Parameter(torch.tensor(table))
        self.v_value = nn.Parameter(torch.tensor(v))

    def q_jt(self, features, action_one_hot, state):
        u = action_one_hot.argmax(-1)
        return (self.table[u[..., 0], u[..., 1]] + 100.0 * state[..., 0]).unsqueeze(-1)

    def v(self, state):
        return self.v_value.expand(*state.shape[:-1], 1)


class TableWithFeatures(TableQ):
    def forward(self, observation):
        q = super().forward(observation)
        return q, torch.zeros(*q.shape[:-1], 1)


def agents():
    return TensorDictModule(
        TableWithFeatures(MAIN, by_obs=True),
        in_keys=[("agents", "observation")],
        out_keys=[("agents", "action_value"), ("agents", "features")],
    )


def make_loss(**kwargs):
    return QTRANLoss(agents(), TableJoint(PAYOFF, V), **kwargs)


# current state: Q_1 = (1, 0, 0), Q_2 = (0, 0, 2): greedy (A, C), sum 3, Q_jt(A, C) = -12
ACTIONS = [[0, 2], [0, 0], [1, 1], [2, 2]]
REWARDS = [0.0, 10.0, 5.0, -1.0]


def test_three_terms_by_hand(make_transition):
    loss = make_loss(opt_coef=1.0, nopt_coef=0.1)
    out = loss(make_transition(ACTIONS, REWARDS, [1, 1, 1, 1]))  # terminal: y = r
    q_jt = [-12.0, 8.0, 0.0, 7.9]
    td = sum((q - r) ** 2 for q, r in zip(q_jt, REWARDS, strict=True)) / 4
    opt = (3.0 - (-12.0) + V) ** 2  # same greedy action in every sample
    q_sum = [3.0, 1.0, 0.0, 2.0]
    nopt = sum(min(q - j + V, 0.0) ** 2 for q, j in zip(q_sum, q_jt, strict=True)) / 4
    torch.testing.assert_close(out["loss_td"], torch.tensor(td))
    torch.testing.assert_close(out["loss_opt"], torch.tensor(opt))
    torch.testing.assert_close(out["loss_nopt"], torch.tensor(0.1 * nopt))
    torch.testing.assert_close(out["v_mean"], torch.tensor(V))


def test_opt_term_uses_the_masked_greedy_action(make_transition):
    mask = torch.ones(1, 2, 3, dtype=torch.bool)
    mask[0, 1, 2] = False  # agent 2 may not take C: its greedy is A (tie with B, first)
    out = make_loss()(make_transition([[0, 0]], [0.0], [1], mask=mask))
    torch.testing.assert_close(out["loss_opt"], torch.tensor((1.0 + 0.0 - 8.0 + V) ** 2))


def test_gradient_paths():
    """L_td trains Q_jt only; L_opt and L_nopt train the agents and V_jt, never Q_jt."""
    from tests.conftest import transition

    loss = make_loss()
    out = loss(transition(ACTIONS, REWARDS, [1, 1, 1, 1]))
    params = dict(loss.named_parameters())
    table = params["joint_network_params.table"]
    v = params["joint_network_params.v_value"]
    main = params["agent_network_params.module.table"]

    def grads(term):
        return torch.autograd.grad(
            out[term], [table, v, main], retain_graph=True, allow_unused=True
        )

    g_table, g_v, g_main = grads("loss_td")
    assert (
        g_table.abs().sum() > 0
        and (g_v is None or g_v == 0)
        and (g_main is None or (g_main == 0).all())
    )
    for term in ("loss_opt", "loss_nopt"):
        g_table, g_v, g_main = grads(term)
        assert g_table is None or (g_table == 0).all(), term
        assert g_v.abs() > 0 and g_main.abs().sum() > 0, term


def test_bootstrap_uses_target_networks_at_the_online_greedy_next_action(make_transition):
    loss = make_loss(gamma=0.5)
    # next state (obs 1): Q_1 = (0, 3, 0), Q_2 = (1, 0, 0): online greedy (B, A);
    # target Q_jt(s', (B, A)) = -12 + 100
    with torch.no_grad():
        loss.joint_network_params["table"].add_(1000.0)  # online only: the target must not move
    td = make_transition([[0, 0]], [1.0], [0])
    out = loss(td)
    target = 1.0 + 0.5 * (-12.0 + 100.0)
    q_jt = 8.0 + 1000.0
    torch.testing.assert_close(out["loss_td"], torch.tensor((q_jt - target) ** 2))
    before = loss.target_joint_network_params.clone()
    online = loss.joint_network_params.clone()
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    torch.optim.SGD(loss.parameters(), lr=1.0).step()  # a step over all the loss trains
    assert (loss.target_joint_network_params == before).all()
    assert not (loss.joint_network_params == online).all()  # while the online one moved
    for targets in (loss.target_joint_network_params, loss.target_agent_network_params):
        assert all(not p.requires_grad and p.grad is None for p in targets.values(True, True))


def test_learns_on_random_data_and_reaches_finite_values(make_transition):
    """100 Adam steps on a fixed batch of random joint actions, whose rewards are a random
    payoff of the joint action (so Q_jt can fit them), bring loss_td below a tenth of its
    start (seeds 0-5 reach under 1 %); every output stays finite."""
    torch.manual_seed(0)
    qnet = make_agent_qnet(1, 3, 2, features_key=("agents", "features"))
    loss = QTRANLoss(qnet, QTranJointNetwork(2, 3, 64, 1, 16))
    action = torch.randint(3, (32, 2))
    payoff = torch.randn(3, 3)
    td = make_transition(action, payoff[action[:, 0], action[:, 1]], torch.ones(32))
    optimizer = torch.optim.Adam(loss.parameters(), lr=1e-2)
    history = []
    for _ in range(101):
        out = loss(td)
        assert all(torch.isfinite(v).all() for v in out.values())
        history.append(out["loss_td"].item())
        optimizer.zero_grad()
        sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        optimizer.step()
    assert history[-1] < 0.1 * history[0], (history[0], history[-1])
    assert td["td_error"].shape == (32, 1)


def test_agent_network_without_features_is_rejected():
    with pytest.raises(ValueError, match="features_key"):
        QTRANLoss(make_agent_qnet(1, 3, 2), QTranJointNetwork(2, 3, 64, 1))
    with pytest.raises(TypeError, match="QTranJointNetwork"):
        QTRANLoss(agents(), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="opt_coef"):
        make_loss(opt_coef=-1.0)


@pytest.mark.parametrize("n_actions", [2, 4])
def test_a_joint_network_for_another_action_count_is_rejected(n_actions, make_transition):
    """It ran (more actions: a one-hot padded with never-taken actions) or failed inside
    ``one_hot``; the agents' 3 actions are compared with the network's."""
    loss = QTRANLoss(agents(), QTranJointNetwork(2, n_actions, 1, 1))
    with pytest.raises(
        ValueError, match=f"have 3 actions but joint_network was built for {n_actions}"
    ):
        loss(make_transition([[0, 0]], [0.0], [1]))


def test_joint_network_rejects_wrong_shapes():
    net = QTranJointNetwork(2, 3, 4, 5)
    with pytest.raises(ValueError, match="features"):
        net(torch.zeros(7, 3, 4), torch.zeros(7, 2, 3), torch.zeros(7, 5))
    with pytest.raises(ValueError, match="state"):
        net(torch.zeros(7, 2, 4), torch.zeros(7, 2, 3), torch.zeros(7, 4))
    q, v = net(torch.zeros(7, 2, 4), torch.zeros(7, 2, 3), torch.zeros(7, 5))
    assert q.shape == v.shape == (7, 1)
