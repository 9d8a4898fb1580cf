import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

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


# --- Values: each mixer's Q_tot against its reference formula, computed in the test ---------
# QMIX: oxwhirl/pymarl src/modules/mixers/qmix.py; Qatten: the Qatten authors' mixer (as
# shipped with QPLEX, wjh720/QPLEX qatten.py), weighted heads with a state bias; the
# feed-forward mixer: WQMIX's QMixerCentralFF (oxwhirl/wqmix), which ResQ uses for its central
# Q* and its residual mixer.


def _set(linear: nn.Linear, weight, bias=None) -> None:
    """Give ``linear`` the literal ``weight`` (and ``bias``; zero when it has one and none is
    given)."""
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        if linear.bias is not None:
            linear.bias.copy_(torch.zeros_like(linear.bias) if bias is None else torch.tensor(bias))


def test_qmixer_value_by_hand_is_elu_of_abs_w1_plus_b1_then_abs_w2_plus_state_value():
    """QMIX on one state, weights set by hand (state ``s = 1``, so every hypernetwork outputs
    its weight column): ``Q_tot = elu(q |W1| + b1) |W2| + V(s)``, ``V = Linear-ReLU-Linear``.

    q = (1, -2); W1 = |[[-1, 2], [0.5, -3]]|, b1 = (0.5, -1)
    -> pre-activation (1 - 1 + 0.5, 2 - 6 - 1) = (0.5, -5); elu -> (0.5, e^-5 - 1)
    W2 = |(-2, 1)| -> 0.5 * 2 + (e^-5 - 1) * 1 = e^-5
    V: Linear(1, 2) (1, -1) -> ReLU (1, 0) -> Linear (3, 5) + 0.25 = 3.25
    Q_tot = e^-5 + 3.25 (ReLU in place of ELU: 4.25; no b1: e^-4 - 1 + 3.25; no V: e^-5)."""
    mixer = QMixer(n_agents=2, state_dim=1, mixing_embed_dim=2, hypernet_layers=1)
    _set(mixer.hyper_w_1, [[-1.0], [2.0], [0.5], [-3.0]])  # view [N, E]: row i is agent i
    _set(mixer.hyper_b_1, [[0.5], [-1.0]])
    _set(mixer.hyper_w_final, [[-2.0], [1.0]])
    _set(mixer.V[0], [[1.0], [-1.0]])
    _set(mixer.V[2], [[3.0, 5.0]], [0.25])
    q = torch.tensor([[[1.0], [-2.0]]])
    expected = math.exp(-5) + 3.25
    out = mixer(q, torch.ones(1, 1))
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def _mlp(x: torch.Tensor, *linears: nn.Linear) -> torch.Tensor:
    """``Linear -> ReLU -> ... -> Linear`` written out from the layers' weights."""
    for i, lin in enumerate(linears):
        x = x @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            x = torch.relu(x)
    return x


@pytest.mark.parametrize("k", [1, 3])
def test_qmixer_with_two_layer_hypernetworks_follows_the_pymarl_formula(k):
    """Random weights (two-layer hypernetworks ``Linear-ReLU-Linear``), batch of states and
    ``K`` sets of utilities per state: the mixer equals
    ``elu(q |W1(s)| + b1(s)) |W2(s)| + V(s)`` computed here per sample from the weights."""
    torch.manual_seed(3)
    n, s_dim, e = 3, 4, 5
    mixer = QMixer(n, s_dim, mixing_embed_dim=e, hypernet_embed=6, hypernet_layers=2)
    with torch.no_grad():
        for p in mixer.parameters():
            p.mul_(3.0)  # pre-activations well on both sides of 0: elu != relu
    state = torch.randn(7, s_dim)
    q = torch.randn(7, k, n) * 3
    with torch.no_grad():
        out = mixer.mix_fractions(q, state) if k > 1 else mixer(q.transpose(1, 2), state)
        expected, negative = torch.empty(7, k), False
        for b in range(7):
            s = state[b]
            w1 = _mlp(s, mixer.hyper_w_1[0], mixer.hyper_w_1[2]).abs().view(n, e)
            b1 = mixer.hyper_b_1.weight @ s + mixer.hyper_b_1.bias
            w2 = _mlp(s, mixer.hyper_w_final[0], mixer.hyper_w_final[2]).abs()
            v = _mlp(s, mixer.V[0], mixer.V[2])
            for j in range(k):
                pre = q[b, j] @ w1 + b1
                negative |= bool((pre < -0.5).any())
                expected[b, j] = torch.nn.functional.elu(pre) @ w2 + v
    assert negative  # the case tells ELU from ReLU
    torch.testing.assert_close(out.reshape(7, k), expected, rtol=1e-5, atol=1e-5)


def test_qatten_value_by_hand_is_weighted_heads_of_scaled_softmax_attention_plus_bias():
    """Qatten with two heads of size ``d = 4`` on one state, weights set by hand:
    ``Q_tot = sum_h |w_h(s)| sum_i softmax_i(q_h . k_{i,h} / sqrt(d)) Q_i + c(s)``.

    state (1, 2), unit_dim 1: agent features e = (1, 2). The query net gives q_1 = (2, 0, 0, 0),
    q_2 = (1, 0, 0, 0); the keys are k_{i,1} = (e_i, 0, 0, 0), k_{i,2} = (-e_i, 0, 0, 0).
    Logits / sqrt(4): head 1 (2, 4) / 2 = (1, 2), head 2 (-1, -2) / 2 = (-0.5, -1).
    Head weights |(-3, 2)| = (3, 2); c(s): Linear (0.5, 0.25) -> 1 -> ReLU -> 2 * 1 - 0.5 = 1.5.
    With Q = (4, -2): head 1 = (4 - 2e) / (1 + e), head 2 = (4 - 2e^-0.5) / (1 + e^-0.5)."""
    mixer = QattenMixer(2, 2, n_heads=2, embed_dim=4, hypernet_embed=1, unit_dim=1)
    _set(mixer.query[0], [[0.0, 0.0]], [1.0])  # hidden 1 whatever the state
    _set(mixer.query[2], [[2.0], [0.0], [0.0], [0.0], [1.0], [0.0], [0.0], [0.0]])
    _set(mixer.key, [[1.0], [0.0], [0.0], [0.0], [-1.0], [0.0], [0.0], [0.0]])
    _set(mixer.head_weight[0], [[0.0, 0.0]], [1.0])
    _set(mixer.head_weight[2], [[-3.0], [2.0]])
    _set(mixer.V[0], [[0.5, 0.25]])
    _set(mixer.V[2], [[2.0]], [-0.5])
    e = math.e
    head_1 = (4 - 2 * e) / (1 + e)
    head_2 = (4 - 2 * e**-0.5) / (1 + e**-0.5)
    expected = 3 * head_1 + 2 * head_2 + 1.5
    state = torch.tensor([[1.0, 2.0]])
    lam = mixer.attention(state)
    torch.testing.assert_close(
        lam, torch.tensor([[[1 / (1 + e), e / (1 + e)], [1 / (1 + e**-0.5), 1 / (1 + e**0.5)]]])
    )
    out = mixer(torch.tensor([[[4.0], [-2.0]]]), state)
    assert out.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("unit_dim", [2, None])
def test_qatten_with_random_weights_follows_the_formula_per_sample_and_head(unit_dim):
    """Random weights, three heads, a batch of states and ``K = 2`` sets of utilities: the
    mixer equals the Qatten formula computed here per sample and head from the weights
    (query ``Linear-ReLU-Linear`` of the state, key ``Linear`` of agent ``i``'s features:
    its ``unit_dim`` slice of the state, or the state with ``i``'s one-hot id appended;
    logits scaled by ``1/sqrt(d)``; head weights ``|Linear-ReLU-Linear(s)|``; state bias
    ``Linear-ReLU-Linear(s)``)."""
    torch.manual_seed(4)
    n, s_dim, h, d, k = 3, 7, 3, 4, 2
    mixer = QattenMixer(n, s_dim, n_heads=h, embed_dim=d, hypernet_embed=5, unit_dim=unit_dim)
    with torch.no_grad():
        for p in mixer.parameters():
            p.mul_(2.0)  # logits of a few units: the sqrt(d) scaling shows
    state, q = torch.randn(6, s_dim), torch.randn(6, k, n) * 3
    with torch.no_grad():
        out = mixer.mix_fractions(q, state)
        single = mixer(q[:, :1].transpose(1, 2), state)
        expected = torch.empty(6, k)
        for b in range(6):
            s = state[b]
            query = _mlp(s, mixer.query[0], mixer.query[2]).view(h, d)
            if unit_dim is None:
                feats = [torch.cat([s, torch.eye(n)[i]]) for i in range(n)]
            else:
                feats = [s[i * unit_dim : (i + 1) * unit_dim] for i in range(n)]
            keys = torch.stack([mixer.key.weight @ f for f in feats]).view(n, h, d)
            w = _mlp(s, mixer.head_weight[0], mixer.head_weight[2]).abs()
            c = _mlp(s, mixer.V[0], mixer.V[2])
            for j in range(k):
                total = c.clone()
                for head in range(h):
                    logits = torch.stack([query[head] @ keys[i, head] for i in range(n)])
                    lam = torch.softmax(logits / math.sqrt(d), dim=0)
                    total += w[head] * (lam * q[b, j]).sum()
                expected[b, j] = total
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, expected[:, :1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("state_dim", [1, 3])
def test_feedforward_mixer_is_a_relu_mlp_of_state_and_utilities_plus_state_value(state_dim):
    """Random weights: ``mix`` and ``mix_fractions`` (its single-product path for a state no
    wider than the utilities, its split first layer for a wider one) equal
    ``f([s, q_1..q_N]) + V(s)`` computed here from the weights: ``f`` the ReLU MLP of the
    mixer's ``net`` layers in order (state first, as WQMIX's ``cat([states, agent_qs])``),
    ``V = Linear-ReLU-Linear(s)``."""
    torch.manual_seed(5)
    n, k = 2, 3
    mixer = FeedForwardMixer(n, state_dim, embed_dim=6)
    linears = [m for m in mixer.net if isinstance(m, nn.Linear)]
    assert all(isinstance(m, (nn.Linear, nn.ReLU)) for m in mixer.net)
    state = torch.randn(5, state_dim) * 2
    q = torch.randn(5, k, n) * 3
    with torch.no_grad():
        expected = torch.empty(5, k)
        for b in range(5):
            v = _mlp(state[b], mixer.V[0], mixer.V[2])
            for j in range(k):
                expected[b, j] = _mlp(torch.cat([state[b], q[b, j]]), *linears) + v
        mixed = mixer(q.unsqueeze(-1), state.unsqueeze(1).expand(5, k, state_dim))
        fractions = mixer.mix_fractions(q, state)
    assert (expected.abs() > 1e-3).all()
    torch.testing.assert_close(mixed.squeeze(-1), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fractions, expected, rtol=1e-5, atol=1e-5)


def test_feedforward_mixer_state_value_by_hand():
    """``f`` set to zero (every ``net`` weight and bias 0) leaves ``Q = V(s)``, with
    ``V(s) = Linear-ReLU-Linear``: s = 2, Linear(1, 2) (1, -1) -> (2, -2) -> ReLU (2, 0)
    -> Linear (3, 7) + 0.5 = 6.5, whatever the utilities."""
    mixer = FeedForwardMixer(2, 1, embed_dim=2)
    with torch.no_grad():
        for p in mixer.net.parameters():
            p.zero_()
    _set(mixer.V[0], [[1.0], [-1.0]])
    _set(mixer.V[2], [[3.0, 7.0]], [0.5])
    out = mixer(torch.tensor([[[5.0], [-4.0]], [[0.0], [9.0]]]), torch.full((2, 1), 2.0))
    assert out.squeeze(-1).tolist() == [6.5, 6.5]


def test_feedforward_mixer_depth_the_reference_layout_and_the_default():
    """``hidden_layers=3`` is the reference ``QMixerCentralFF`` (oxwhirl/wqmix; ResQ's
    released code): Linear(S + N, E), ReLU, Linear(E, E), ReLU, Linear(E, E), ReLU,
    Linear(E, 1), plus V(s) = Linear(S, E), ReLU, Linear(E, 1). The default (2) is the
    depth the committed results used, built with the same draws as always."""
    torch.manual_seed(0)
    deep = FeedForwardMixer(3, 5, embed_dim=16, hidden_layers=3)
    linears = [(m.in_features, m.out_features) for m in deep.net if isinstance(m, nn.Linear)]
    assert linears == [(8, 16), (16, 16), (16, 16), (16, 1)]
    assert [type(m) for m in deep.net[1::2]] == [nn.ReLU] * 3
    assert [(m.in_features, m.out_features) for m in deep.V[::2]] == [(5, 16), (16, 1)]
    torch.manual_seed(0)
    default = FeedForwardMixer(3, 5, embed_dim=16)
    assert [k for k, _ in default.named_parameters()] == [
        "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "net.4.weight",
        "net.4.bias", "V.0.weight", "V.0.bias", "V.2.weight", "V.2.bias",
    ]  # fmt: skip
    # the same first draws: the default's first two layers are the deep one's
    assert torch.equal(default.net[0].weight, deep.net[0].weight)
    # every depth mixes a set of fractions as it mixes one, on the split path (S > N)
    for mixer in (deep, default):
        q, s = torch.randn(4, 6, 3), torch.randn(4, 5)
        per_fraction = torch.stack(
            [mixer(q[:, k].unsqueeze(-1), s).squeeze(-1) for k in range(6)], -1
        )
        torch.testing.assert_close(mixer.mix_fractions(q, s), per_fraction)
    with pytest.raises(ValueError, match="hidden_layers=0"):
        FeedForwardMixer(3, 5, hidden_layers=0)
