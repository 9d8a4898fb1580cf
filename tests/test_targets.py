"""Bootstrapped targets over sequences: TD(lambda) by hand, recurrent next-state values."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import ValueEstimators

from resq_torchrl.modules import VDNMixer
from resq_torchrl.modules.rnn import MultiAgentGRU
from resq_torchrl.objectives import QMIXLoss


class ObsQ(nn.Module):
    """``Q_i(a) = observation_i[0] + bias[a]``: values that follow the observation."""

    def __init__(self, bias):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(bias))

    def forward(self, observation):
        return observation[..., :1] + self.bias


def sequences(next_obs, reward, terminated, truncated):
    """[B, T] transitions of 2 agents, 3 actions; current observations 0, action A."""
    next_obs = torch.tensor(next_obs, dtype=torch.float32)
    b, t = next_obs.shape
    terminated = torch.tensor(terminated).bool().unsqueeze(-1)
    truncated = torch.tensor(truncated).bool().unsqueeze(-1)
    ones = torch.ones(b, t, 2, 3, dtype=torch.bool)
    return TensorDict(
        {
            ("agents", "observation"): torch.zeros(b, t, 2, 1),
            ("agents", "action"): torch.zeros(b, t, 2, dtype=torch.long),
            ("agents", "action_mask"): ones,
            "state": torch.zeros(b, t, 1),
            ("next", "agents", "observation"): next_obs[..., None, None].expand(b, t, 2, 1),
            ("next", "agents", "action_mask"): ones.clone(),
            ("next", "state"): torch.zeros(b, t, 1),
            ("next", "reward"): torch.tensor(reward, dtype=torch.float32).unsqueeze(-1),
            ("next", "terminated"): terminated,
            ("next", "truncated"): truncated,
            ("next", "done"): terminated | truncated,
        },
        [b, t],
    )


def test_td_lambda_targets_by_hand_with_termination_and_truncation():
    """gamma = lambda = 0.5; greedy next action B in every step, so V'_t = 2 (o'_t + 1).
    Row 0: terminated at t=1, a new episode from t=2, truncated at t=3 (bootstraps).
    Row 1: terminated at t=3."""
    net = TensorDictModule(
        ObsQ([0.0, 1.0, 0.0]),
        in_keys=[("agents", "observation")],
        out_keys=[("agents", "action_value")],
    )
    loss = QMIXLoss(net, VDNMixer(2, device=None)).make_value_estimator(
        ValueEstimators.TDLambda, gamma=0.5, lmbda=0.5
    )
    td = sequences(
        next_obs=[[0, 1, 2, 3], [0, 1, 2, 3]],  # V' = 2, 4, 6, 8
        reward=[[1, 1, 1, 1], [1, 1, 1, 1]],
        terminated=[[0, 1, 0, 0], [0, 0, 0, 1]],
        truncated=[[0, 0, 0, 1], [0, 0, 0, 0]],
    )
    loss(td)
    # y_t = r + g (1 - term) [(1 - l) V'_t + l y_{t+1}], no recursion past done
    # row 0: y3 = 1 + .5 * 8 = 5 (truncated: bootstrap); y2 = 1 + .5 (.5 * 6 + .5 * 5) = 3.75
    #        y1 = 1 (terminated);                         y0 = 1 + .5 (.5 * 2 + .5 * 1) = 1.75
    # row 1: y3 = 1; y2 = 1 + .5 (3 + .5) = 2.75; y1 = 1 + .5 (2 + 1.375) = 2.6875
    #        y0 = 1 + .5 (1 + 1.34375) = 2.171875
    expected = torch.tensor([[1.75, 1.0, 3.75, 5.0], [2.171875, 2.6875, 2.75, 1.0]])
    # Q_tot of the taken action is 0 (observation 0, action A), so |td error| = y
    torch.testing.assert_close(td["td_error"].squeeze(-1), expected)


def test_td0_is_the_default_and_lambda_zero_equals_td0():
    net = TensorDictModule(
        ObsQ([0.0, 1.0, 0.0]),
        in_keys=[("agents", "observation")],
        out_keys=[("agents", "action_value")],
    )
    td = sequences([[0, 1, 2]], [[1, 2, 3]], [[0, 0, 1]], [[0, 0, 0]])
    loss = QMIXLoss(net, VDNMixer(2, device=None), gamma=0.5)
    assert loss.value_type == ValueEstimators.TD0
    loss(td)
    td0 = td["td_error"].clone()
    torch.testing.assert_close(td0.squeeze(-1), torch.tensor([[1 + 0.5 * 2, 2 + 0.5 * 4, 3.0]]))
    loss.make_value_estimator(ValueEstimators.TDLambda, lmbda=0.0)
    loss(td)
    torch.testing.assert_close(td["td_error"], td0)
    with pytest.raises(NotImplementedError):
        loss.make_value_estimator(ValueEstimators.GAE)
    with pytest.raises(ValueError, match="lmbda"):
        loss.make_value_estimator(ValueEstimators.TDLambda, lmbda=2.0)
    # lmbda is not carried over from an earlier call: its documented default, 0.6
    loss.make_value_estimator(ValueEstimators.TDLambda, lmbda=0.9)
    assert loss.make_value_estimator(ValueEstimators.TDLambda).lmbda == 0.6
    assert loss.gamma == 0.5  # gamma stays the loss's


@pytest.mark.parametrize("fast_unroll", [False, True], ids=["one_step_from_the_state", "fast"])
def test_recurrent_next_values_continue_the_hidden_state(fast_unroll):
    """For a recurrent agent the loss's next-state utilities at t equal its utilities at t+1
    (same observation and last action), i.e. the hidden state carries over: without
    ``fast_unroll`` the next values are one step from the state the unroll wrote under
    "next"; with it they come from the same unroll over T + 1 steps."""
    torch.manual_seed(0)
    gru = MultiAgentGRU(obs_dim=3, n_actions=4, n_agents=2, hidden_dim=8)
    loss = QMIXLoss(gru, VDNMixer(2, device=None))
    loss.fast_unroll = fast_unroll
    b, t = 3, 6
    obs = torch.randn(b, t + 1, 2, 3)
    actions = torch.randint(4, (b, t + 1, 2))
    last = torch.nn.functional.one_hot(actions, 4).float().roll(1, dims=1)
    last[:, 0] = 0
    td = TensorDict(
        {
            ("agents", "observation"): obs[:, :t],
            ("agents", "last_action"): last[:, :t],
            "is_init": torch.zeros(b, t, 1, dtype=torch.bool).index_fill_(1, torch.tensor(0), 1),
            ("next", "agents", "observation"): obs[:, 1:],
            ("next", "agents", "last_action"): last[:, 1:],
        },
        [b, t],
    )
    q, q_next = loss._agent_q("agent_network", td, with_next=True)
    assert q.shape == (b, t, 2, 4)
    torch.testing.assert_close(q_next[:, :-1], q[:, 1:].detach(), atol=1e-5, rtol=0)


def test_td_lambda_with_zero_gamma_is_the_reward():
    net = TensorDictModule(
        ObsQ([0.0, 1.0, 0.0]),
        in_keys=[("agents", "observation")],
        out_keys=[("agents", "action_value")],
    )
    loss = QMIXLoss(net, VDNMixer(2, device=None)).make_value_estimator(
        ValueEstimators.TDLambda, gamma=0.0, lmbda=0.6
    )
    td = sequences([[0, 1, 2]], [[1, 2, 3]], [[0, 0, 1]], [[0, 0, 0]])
    loss(td)
    torch.testing.assert_close(td["td_error"].squeeze(-1), torch.tensor([[1.0, 2.0, 3.0]]))
