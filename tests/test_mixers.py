import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resq_torchrl.modules import AgentMLP, FeedForwardMixer, QattenMixer, QMixer, VDNMixer


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), batch=st.integers(1, 6))
def test_qmixer_is_monotonic_in_every_agent_utility(seed, n, batch):
    torch.manual_seed(seed)
    mixer = QMixer(n_agents=n, state_dim=4, mixing_embed_dim=8, hypernet_embed=16)
    q = (torch.randn(batch, n, 1) * 5).requires_grad_()
    state = torch.randn(batch, 4)
    (grad,) = torch.autograd.grad(mixer(q, state).sum(), q)
    assert (grad >= 0).all()


def test_mixer_shapes_over_extra_batch_dims():
    q, state = torch.randn(5, 7, 3, 1), torch.randn(5, 7, 4)
    assert QMixer(3, 4)(q, state).shape == (5, 7, 1)
    assert QMixer(3, 4, hypernet_layers=1)(q, state).shape == (5, 7, 1)
    assert FeedForwardMixer(3, 4, embed_dim=16)(q, state).shape == (5, 7, 1)
    torch.testing.assert_close(VDNMixer(3, device=None)(q), q.sum(-2))


def test_a_float64_state_mixes_as_its_float32_values():
    """A float64 state (numpy-built data) with float32 utilities: every mixer casts it to
    the utilities' dtype (QMixer raised a dtype mismatch from inside its hypernetworks)."""
    torch.manual_seed(0)
    q, state = torch.randn(5, 3, 1), torch.randn(5, 4)
    for mixer in (
        QMixer(3, 4),
        FeedForwardMixer(3, 4, embed_dim=16),
        QattenMixer(3, 4, unit_dim=1),
    ):
        torch.testing.assert_close(mixer(q, state.double()), mixer(q, state), rtol=0, atol=0)


def test_feedforward_mixer_can_be_non_monotonic():
    torch.manual_seed(0)
    mixer = FeedForwardMixer(2, 1, embed_dim=32)
    q = (torch.randn(256, 2, 1) * 5).requires_grad_()
    (grad,) = torch.autograd.grad(mixer(q, torch.ones(256, 1)).sum(), q)
    assert (grad < 0).any() and (grad > 0).any()


def test_mixers_reject_an_agent_count_mismatch():
    with pytest.raises(ValueError, match=r"last 2 dimensions \(3, 1\)"):
        QMixer(3, 4)(torch.randn(5, 2, 1), torch.randn(5, 4))
    with pytest.raises(ValueError, match="hypernet_layers"):
        QMixer(3, 4, hypernet_layers=3)


def test_agent_mlp_shares_parameters_and_uses_agent_id():
    torch.manual_seed(0)
    obs = torch.ones(4, 3, 2)
    with_id = AgentMLP(obs_dim=2, n_actions=5, n_agents=3, agent_id=True)
    without = AgentMLP(obs_dim=2, n_actions=5, n_agents=3, agent_id=False)
    out_id, out = with_id(obs), without(obs)
    assert out_id.shape == (4, 3, 5)
    torch.testing.assert_close(out[:, 0], out[:, 1])  # same input, same parameters
    assert not torch.allclose(out_id[:, 0], out_id[:, 1])  # the id tells agents apart
    with pytest.raises(ValueError, match="built for 3 agents"):
        with_id(torch.ones(4, 2, 2))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), unit=st.booleans())
def test_qatten_is_monotonic_and_its_attention_is_a_distribution(seed, n, unit):
    torch.manual_seed(seed)
    state_dim = 3 * n + 2
    mixer = QattenMixer(
        n, state_dim, n_heads=3, embed_dim=8, hypernet_embed=16, unit_dim=3 if unit else None
    )
    q = (torch.randn(6, n, 1) * 5).requires_grad_()
    state = torch.randn(6, state_dim)
    (grad,) = torch.autograd.grad(mixer(q, state).sum(), q)
    assert (grad >= 0).all()
    lam = mixer.attention(state)
    assert lam.shape == (6, 3, n) and (lam >= 0).all()
    torch.testing.assert_close(lam.sum(-1), torch.ones(6, 3))


def test_qatten_unit_features_come_from_the_state_and_bad_unit_dim_is_rejected():
    mixer = QattenMixer(2, 7, unit_dim=3)
    state = torch.arange(7.0).unsqueeze(0)
    assert mixer.agent_features(state).tolist() == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
    assert mixer(torch.randn(4, 5, 2, 1), torch.randn(4, 5, 7)).shape == (4, 5, 1)
    with pytest.raises(ValueError, match="does not fit"):
        QattenMixer(3, 7, unit_dim=3)


@pytest.mark.parametrize(
    "build",
    [
        lambda: QMixer(0, 4),
        lambda: QMixer(2, 4, mixing_embed_dim=0),
        lambda: QMixer(2, -3),
        lambda: FeedForwardMixer(2, 4, embed_dim=0),
        lambda: FeedForwardMixer(0, 4),
        lambda: QattenMixer(2, 4, n_heads=0),
        lambda: AgentMLP(1, 3, 2, hidden=(-4,)),
        lambda: AgentMLP(1, 0, 2),
    ],
)
def test_a_size_below_one_is_named(build):
    """Zero sizes built layers of no units (trained in silence, or failed at the first
    forward), negative ones failed inside torch; every network and mixer now says which."""
    with pytest.raises(ValueError, match="needs positive sizes, got "):
        build()


def test_iqn_and_recurrent_agents_and_the_sum_losses_check_their_sizes():
    from resq_torchrl.modules import IQNAgentMLP, MultiAgentGRU, make_agent_qnet
    from resq_torchrl.objectives import DDNLoss, VDNLoss

    for build in (
        lambda: IQNAgentMLP(1, 3, 2, n_acting=0),
        lambda: IQNAgentMLP(1, 3, 2, hidden=(0,)),
        lambda: MultiAgentGRU(1, 3, 2, hidden_dim=0),
        lambda: VDNLoss(make_agent_qnet(1, 3, 2), n_agents=0),
        lambda: DDNLoss(IQNAgentMLP(1, 3, 2), n_agents=-1),
    ):
        with pytest.raises(ValueError, match="needs positive sizes, got "):
            build()


def test_a_state_of_another_batch_shape_is_refused():
    """The mixers flatten the utilities and the state: a ``[6, 4]`` state for ``[4, 6]``
    utilities (as many rows) paired the wrong samples in silence."""
    q = torch.randn(4, 6, 3, 1)
    for mixer in (QMixer(3, 5), FeedForwardMixer(3, 5, embed_dim=8), QattenMixer(3, 5)):
        assert mixer(q, torch.randn(4, 6, 5)).shape == (4, 6, 1)
        for state in (torch.randn(6, 4, 5), torch.randn(24, 5)):
            with pytest.raises(ValueError, match=r"batch shape \(4, 6\) with a state of batch"):
                mixer(q, state)
