"""Distributional value factorization: quantile loss, per-fraction targets, IQN agents,
DDN/DMIX mixers and ResZ, against hand-computed cases."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode
from torchrl.modules.models.multiagent import VDNMixer
from torchrl.objectives.utils import ValueEstimators

from resq_torchrl.modules import (
    DMIXMixer,
    FeedForwardMixer,
    IQNAgentMLP,
    MultiAgentIQN,
    QattenMixer,
    QMixer,
    QuantileMixer,
)
from resq_torchrl.objectives import (
    DDNLoss,
    DMIXLoss,
    ResZLoss,
    gather_quantiles,
    quantile_huber_loss,
)
from tests.conftest import transition


def test_quantile_huber_loss_by_hand():
    pred = torch.tensor([[0.0, 1.0]])
    tau = torch.tensor([[0.25, 0.75]])
    target = torch.tensor([[0.5, 3.0]])
    # u = target_j - pred_k: [[0.5, 3], [-0.5, 2]]; Huber (kappa 1): [[.125, 2.5], [.125, 1.5]]
    # weights |tau_k - 1{u < 0}|: [[.25, .25], [.25, .75]]
    # mean over j, sum over k: (.03125 + .625) / 2 + (.03125 + 1.125) / 2 = 0.90625
    torch.testing.assert_close(quantile_huber_loss(pred, tau, target), torch.tensor([[0.90625]]))
    # kappa = 0: the plain quantile loss sum_k mean_j |tau - 1{u<0}| |u|
    plain = (0.25 * 0.5 + 0.25 * 3) / 2 + (0.25 * 0.5 + 0.75 * 2) / 2
    torch.testing.assert_close(
        quantile_huber_loss(pred, tau, target, kappa=0.0), torch.tensor([[plain]])
    )


def test_quantile_huber_loss_gradient_skips_the_target():
    pred = torch.tensor([[0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.5, 3.0]], requires_grad=True)
    quantile_huber_loss(pred, torch.tensor([[0.25, 0.75]]), target).sum().backward()
    assert target.grad is None and pred.grad.abs().sum() > 0


def test_quantile_regression_recovers_the_quantiles_of_samples():
    """Minimising the loss over a learnable vector gives the empirical quantiles."""
    torch.manual_seed(0)
    samples = torch.randn(1, 4000) * 2.0 + 1.0
    tau = torch.tensor([[0.1, 0.5, 0.9]])
    pred = torch.zeros(1, 3, requires_grad=True)
    opt = torch.optim.Adam([pred], lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        quantile_huber_loss(pred, tau, samples, kappa=0.0).sum().backward()
        opt.step()
    expected = torch.quantile(samples[0], tau[0])
    torch.testing.assert_close(pred.detach()[0], expected, atol=0.1, rtol=0)


def _sequences():
    """B=2 episodes of T=4 steps: a termination at t=2 of episode 0 (then padding-free
    restart), a truncation at t=1 of episode 1."""
    reward = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 1.0]]).unsqueeze(-1)
    terminated = torch.zeros(2, 4, 1, dtype=torch.bool)
    truncated = torch.zeros(2, 4, 1, dtype=torch.bool)
    terminated[0, 2] = True
    truncated[1, 1] = True
    return TensorDict(
        {
            "next": {
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            }
        },
        batch_size=[2, 4],
    )


@pytest.mark.parametrize("estimator", [ValueEstimators.TD0, ValueEstimators.TDLambda])
def test_distributional_targets_are_the_scalar_ones_per_fraction(estimator):
    loss = DDNLoss(IQNAgentMLP(1, 3, 2), n_agents=2)
    loss.make_value_estimator(estimator, gamma=0.9, lmbda=0.6)
    td = _sequences()
    torch.manual_seed(0)
    next_value = torch.randn(2, 4, 5)
    per_fraction = loss._lambda_return(td, next_value)
    assert per_fraction.shape == (2, 4, 5)
    for k in range(5):
        scalar = loss._lambda_return(td, next_value[..., k : k + 1])
        torch.testing.assert_close(per_fraction[..., k : k + 1], scalar)
    if estimator == ValueEstimators.TDLambda:
        # by hand for episode 1, fraction 0: truncation at t=1 cuts the recursion there but
        # still bootstraps from V'_1
        v = next_value[1, :, 0]
        y1 = -1.0 + 0.9 * v[1]
        y3 = 1.0 + 0.9 * v[3]
        y2 = 2.0 + 0.9 * ((1 - 0.6) * v[2] + 0.6 * y3)
        y0 = 0.5 + 0.9 * ((1 - 0.6) * v[0] + 0.6 * y1)
        torch.testing.assert_close(per_fraction[1, :, 0], torch.stack([y0, y1, y2, y3]))


def test_dmix_shape_term_has_mean_zero_and_mean_is_qmix_of_means():
    torch.manual_seed(0)
    qmix = QMixer(n_agents=3, state_dim=4)
    dmix = DMIXMixer(qmix)
    z = torch.randn(16, 3, 8) * 5
    state = torch.randn(16, 4)
    z_mean, z_shape = dmix.decompose(z, state)
    assert z_shape.mean(-1).abs().max() < 1e-6
    torch.testing.assert_close(z_mean, qmix(z.mean(-1, keepdim=True), state))
    torch.testing.assert_close(dmix(z, state).mean(-1, keepdim=True), z_mean)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FeedForwardMixer(n_agents=3, state_dim=20, embed_dim=16),
        lambda: FeedForwardMixer(n_agents=3, state_dim=3, embed_dim=16),  # not split
        lambda: QMixer(n_agents=3, state_dim=20),
        lambda: QattenMixer(n_agents=3, state_dim=20),
    ],
    ids=["feedforward", "feedforward-narrow-state", "qmix", "qatten"],
)
def test_quantile_mixer_applies_the_mixer_to_every_fraction(make):
    """The state's share of the mixer is computed once per state (``mix_fractions``): the
    values and every gradient equal the mixer's own forward applied fraction by fraction."""
    torch.manual_seed(0)
    base = make()
    mixer = QuantileMixer(base)
    z = (torch.randn(4, 6, 3, 8) * 3).requires_grad_()
    state = torch.randn(4, 6, base.state_dim).requires_grad_()
    out = mixer(z, state)
    assert out.shape == (4, 6, 8)
    ref = torch.cat([base(z[..., k : k + 1], state) for k in range(8)], dim=-1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    inputs = [z, state, *base.parameters()]
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad_out)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_quantile_mixer_without_state_and_bad_shapes():
    torch.manual_seed(0)
    mixer = QuantileMixer(FeedForwardMixer(n_agents=2, state_dim=3, embed_dim=16))
    z, state = torch.randn(5, 2, 4), torch.randn(5, 3)
    ddn = QuantileMixer(VDNMixer(n_agents=2, device="cpu"))
    torch.testing.assert_close(ddn(z, None), z.sum(-2))
    with pytest.raises(ValueError, match="agent quantiles"):
        mixer(torch.randn(5, 3, 4), state)


def test_iqn_agents_use_given_fractions_and_write_the_mean():
    torch.manual_seed(0)
    agent = IQNAgentMLP(obs_dim=2, n_actions=3, n_agents=2, n_acting=32)
    td = TensorDict({("agents", "observation"): torch.randn(4, 2, 2)}, [4])
    out = agent(td.clone())
    assert out["agents", "action_value"].shape == (4, 2, 3, 32)
    assert "quantile_fractions" not in out.keys()  # acting fractions are not stored
    tau = torch.rand(4, 8)
    out = agent(td.clone().set("quantile_fractions", tau))
    z = out["agents", "action_value"]
    assert z.shape == (4, 2, 3, 8)
    torch.testing.assert_close(out["agents", "action_value_mean"], z.mean(-1))
    # the same fraction gives the same quantile whatever the other fractions are
    again = agent(td.clone().set("quantile_fractions", tau[:, [3, 0]]))
    torch.testing.assert_close(again["agents", "action_value"][..., 1], z[..., 0])


def test_recurrent_iqn_step_by_step_equals_unrolled():
    torch.manual_seed(0)
    iqn = MultiAgentIQN(obs_dim=3, n_actions=4, n_agents=2, hidden_dim=8)
    b, t = 3, 5
    obs = torch.randn(b, t, 2, 3)
    last = torch.nn.functional.one_hot(torch.randint(4, (b, t, 2)), 4).float()
    tau = torch.rand(b, t, 6)
    seq = TensorDict(
        {
            ("agents", "observation"): obs,
            ("agents", "last_action"): last,
            "quantile_fractions": tau,
            "is_init": torch.zeros(b, t, 1, dtype=torch.bool),
        },
        [b, t],
    )
    with set_recurrent_mode(True):
        unrolled = iqn(seq.clone())["agents", "action_value"]
    h = torch.zeros(b, 2, 8)
    for step in range(t):
        td = seq[:, step].clone().set(("agents", "rnn_hidden"), h)
        out = iqn(td)
        torch.testing.assert_close(
            out["agents", "action_value"], unrolled[:, step], atol=1e-5, rtol=0
        )
        h = out["next", "agents", "rnn_hidden"]


def _resz(**kwargs):
    torch.manual_seed(0)
    agents = IQNAgentMLP(1, 3, 2, hidden=(16,))
    return ResZLoss(
        agents,
        DMIXMixer(QMixer(2, 1, 8, 16)),
        QuantileMixer(FeedForwardMixer(2, 1, 16)),
        QuantileMixer(FeedForwardMixer(2, 1, 16)),
        **kwargs,
    )


def test_resz_residual_is_non_positive_and_off_at_the_greedy_action():
    loss = _resz()
    actions = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    td = transition(actions, torch.zeros(9), torch.ones(9))
    joint = loss.joint_q(td)
    assert (joint["z_r"] <= 0).all()
    greedy = joint["greedy_action"][0]
    at_greedy = (actions == greedy).all(-1)
    assert joint["w_r"][at_greedy].eq(0).all() and joint["w_r"][~at_greedy].eq(1).all()
    torch.testing.assert_close(joint["z_jt"][at_greedy], joint["z_tot"][at_greedy])
    torch.testing.assert_close(joint["z_jt"], joint["z_tot"] + joint["w_r"] * joint["z_r"])
    # greedy by the mean over the loss's fractions
    assert greedy.tolist() == joint["action_value"][0].argmax(-1).tolist()


def test_resz_loss_by_hand_on_terminal_transitions():
    """Terminal steps: every target quantile is the reward, whatever the fractions."""
    loss = _resz()
    td = transition([[0, 1], [2, 2], [1, 0]], [1.0, -2.0, 0.5], [1, 1, 1])
    tau = torch.rand(3, 8)
    td.set("quantile_fractions", tau)  # fixed main fractions
    joint = loss.joint_q(td)
    out = loss(td)
    y = torch.tensor([1.0, -2.0, 0.5]).unsqueeze(-1).expand(3, 8)
    expected = quantile_huber_loss(joint["z_jt"], tau, y).mean()
    torch.testing.assert_close(out["loss_td"], expected)
    assert out["q_r_mean"] <= 0


def test_resz_targets_come_from_the_target_central_networks_only():
    loss = _resz(gamma=0.9)
    td = transition(torch.randint(3, (8, 2)), torch.randn(8), torch.zeros(8))
    before = loss.target_central_mixer_params.clone()
    online = loss.central_mixer_params.clone()
    out = loss(td)
    (out["loss_td"] + out["loss_central"]).backward()
    torch.optim.SGD(loss.parameters(), lr=1.0).step()  # a step over all the loss trains
    assert (loss.target_central_mixer_params == before).all()
    assert not (loss.central_mixer_params == online).all()  # while the online Z* moved
    for targets in (loss.target_central_mixer_params, loss.target_central_agent_network_params):
        assert all(not p.requires_grad and p.grad is None for p in targets.values(True, True))
    # loss_td trains main and residual networks, never the central Z*
    central = [p for p in loss.central_mixer_params.values(True, True) if p.requires_grad]
    grads = torch.autograd.grad(loss(td)["loss_td"], central, allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads)
    main = [p for p in loss.agent_network_params.values(True, True) if p.requires_grad]
    assert any(
        g is not None and g.abs().sum() > 0
        for g in torch.autograd.grad(loss(td)["loss_td"], main, allow_unused=True)
    )


def _ddn(**kwargs):
    torch.manual_seed(0)
    return DDNLoss(IQNAgentMLP(1, 3, 2, hidden=(16,)), n_agents=2, **kwargs)


def _dmix(**kwargs):
    torch.manual_seed(0)
    return DMIXLoss(IQNAgentMLP(1, 3, 2, hidden=(16,)), DMIXMixer(QMixer(2, 1, 8, 16)), **kwargs)


@pytest.mark.parametrize(
    ("make", "targets", "online"),
    [
        # DDN's VDN mixer has no parameters; its online agents choose the next action
        (_ddn, ["target_agent_network_params"], []),
        (_dmix, ["target_agent_network_params", "target_mixer_params"], ["mixer_params"]),
        (
            _resz,
            ["target_central_agent_network_params", "target_central_mixer_params"],
            ["central_agent_network_params", "central_mixer_params"],
        ),
    ],
    ids=["ddn", "dmix", "resz"],
)
def test_the_bootstrap_reads_the_target_networks(make, targets, online):
    """``y = r + gamma Z'(s', a*)``: ``Z'`` comes from the target copies, ``a*`` from the
    online main agents. Moving each target copy moves ``y``; moving the online copies of the
    same networks (which choose nothing) leaves it bit for bit."""
    loss = make(gamma=0.9)
    td = transition(torch.randint(3, (8, 2)), torch.randn(8), torch.zeros(8))

    def target_mean() -> torch.Tensor:
        torch.manual_seed(1)  # the same quantile fractions every time
        with torch.no_grad():
            return loss(td)["target_mean"]

    def shift(name: str, by: float) -> None:
        with torch.no_grad():
            for param in getattr(loss, name).values(True, True):
                param.add_(by)

    before = target_mean()
    for name in online:
        shift(name, 1.0)
    assert torch.equal(target_mean(), before)
    for name in targets:
        shift(name, 0.5)
        after = target_mean()
        assert not torch.equal(after, before), f"{name} does not reach the target"
        before = after


def test_masked_greedy_by_the_mean_never_picks_an_unavailable_action():
    loss = DMIXLoss(IQNAgentMLP(1, 3, 2), DMIXMixer(QMixer(2, 1, 8, 16)))
    for seed in range(5):
        torch.manual_seed(seed)
        mask = torch.rand(16, 2, 3) > 0.5
        mask[..., 0] |= ~mask.any(-1)  # at least one available action each
        td = transition(
            torch.zeros(16, 2, dtype=torch.long),
            torch.zeros(16),
            torch.zeros(16),
            mask=mask,
            next_mask=mask.clone(),
        )
        joint = loss.joint_q(td, with_next=True)
        for key in ("greedy_action", "next_greedy_action"):
            chosen = mask.gather(-1, joint[key].unsqueeze(-1))
            assert chosen.all(), key


def test_gather_quantiles_and_errors():
    z = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).reshape(2, 2, 3, 4)
    action = torch.tensor([[0, 2], [1, 1]])
    out = gather_quantiles(z, action)
    torch.testing.assert_close(out[1, 0], z[1, 0, 1])
    with pytest.raises(ValueError, match="action"):
        gather_quantiles(z, action[:, :1])
    with pytest.raises(TypeError, match="DMIXMixer"):
        DMIXLoss(IQNAgentMLP(1, 3, 2), QuantileMixer(VDNMixer(2, device="cpu")))
    with pytest.raises(ValueError, match="n_quantiles"):
        DDNLoss(IQNAgentMLP(1, 3, 2), n_agents=2, n_quantiles=0)
