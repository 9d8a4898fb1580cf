import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode

from resq_torchrl.modules.rnn import MultiAgentGRU

N, A, OBS, H = 3, 4, 5, 16


def random_sequences(b: int, t: int, seed: int) -> TensorDict:
    """``[b, t]`` steps holding back-to-back episodes of random lengths (``is_init`` at each
    episode start), one-hot last actions that are zero at episode starts."""
    g = torch.Generator().manual_seed(seed)
    is_init = torch.rand(b, t, 1, generator=g) < 0.15
    is_init[:, 0] = True
    actions = torch.randint(A, (b, t, N), generator=g)
    last = torch.nn.functional.one_hot(actions, A).float().roll(1, dims=1)
    last[is_init.squeeze(-1)] = 0.0
    return TensorDict(
        {
            ("agents", "observation"): torch.randn(b, t, N, OBS, generator=g),
            ("agents", "last_action"): last,
            "is_init": is_init,
        },
        [b, t],
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_by_step_equals_unrolled(seed):
    """Property: collecting step by step (state carried through the tensordict, reset at
    is_init) and unrolling over [B, T] in the loss give the same utilities (to 1e-5) on
    episodes of different lengths."""
    torch.manual_seed(seed)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=H)
    seq = random_sequences(b=4, t=23, seed=seed)
    with set_recurrent_mode(True):
        unrolled = gru(seq.clone())
    hidden = torch.randn(4, N, H)  # garbage state: must be discarded at the first is_init
    stepped = []
    for t in range(seq.shape[1]):
        step = seq[:, t].clone()
        step["agents", "rnn_hidden"] = hidden
        out = gru(step)
        stepped.append(out["agents", "action_value"])
        hidden = out["next", "agents", "rnn_hidden"]
    stepped = torch.stack(stepped, 1)
    torch.testing.assert_close(unrolled["agents", "action_value"], stepped, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        unrolled["next", "agents", "rnn_hidden"][:, -1], hidden, atol=1e-5, rtol=0
    )


def test_unroll_starts_from_the_stored_state_of_the_first_step():
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=H)
    seq = random_sequences(b=2, t=6, seed=3)
    seq["is_init"][:] = False
    h0 = torch.randn(2, 6, N, H)
    seq["agents", "rnn_hidden"] = h0
    with set_recurrent_mode(True):
        q = gru(seq.clone())["agents", "action_value"]
    first = seq[:, 0].clone()
    torch.testing.assert_close(q[:, 0], gru(first)["agents", "action_value"])
    seq["agents", "rnn_hidden"] = torch.zeros_like(h0)
    with set_recurrent_mode(True):
        assert not torch.allclose(q, gru(seq.clone())["agents", "action_value"])


def test_utilities_depend_on_last_action_and_agent_id():
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=H)
    td = random_sequences(b=2, t=1, seed=0)[:, 0]
    td["agents", "observation"] = torch.ones(2, N, OBS)
    td["agents", "last_action"] = torch.zeros(2, N, A)
    q = gru(td.clone())["agents", "action_value"]
    assert not torch.allclose(q[:, 0], q[:, 1])  # one-hot agent id
    td["agents", "last_action"][:, :, 1] = 1.0
    assert not torch.allclose(q, gru(td.clone())["agents", "action_value"])


def test_wrong_agent_count_is_rejected():
    gru = MultiAgentGRU(OBS, A, N)
    td = TensorDict(
        {
            ("agents", "observation"): torch.zeros(2, N + 1, OBS),
            ("agents", "last_action"): torch.zeros(2, N + 1, A),
        },
        [2],
    )
    with pytest.raises(ValueError, match=f"built for {N} agents"):
        gru(td)


def test_last_action_as_indices_is_rejected():
    """Integer last actions ``[*B, N]`` failed in a broadcast of the input assembly."""
    gru = MultiAgentGRU(OBS, A, N)
    td = random_sequences(2, 3, seed=0)
    td["agents", "last_action"] = td["agents", "last_action"].argmax(-1)
    with set_recurrent_mode(True), pytest.raises(ValueError, match=rf"one-hot \[\*B, {N}, {A}\]"):
        gru(td)


@pytest.mark.parametrize("seed", [0, 1])
def test_custom_gru_backward_equals_torch_gru(seed):
    """Property: the CPU unroll with the hand-written backward (``_GRUSequence``) gives the
    states and the gradients (inputs, initial state, every weight) of ``nn.GRU`` to 1e-5."""
    torch.manual_seed(seed)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=H)
    seq = random_sequences(b=3, t=11, seed=seed)
    seq["is_init"][:] = False
    seq["is_init"][:, 0] = True
    seq["agents", "rnn_hidden"] = torch.randn(3, 11, N, H)
    seq["is_init"][1, 0] = False  # row 1 starts from its stored state
    seq["agents", "observation"].requires_grad_(True)
    results = {}
    weights = torch.randn(3, 11, N, A)
    for custom in (False, True):
        gru.net.custom_backward = custom
        gru.zero_grad()
        seq["agents", "observation"].grad = None
        data = seq.clone(False)
        with set_recurrent_mode(True):
            out = gru(data)
        q, h = out["agents", "action_value"], out["next", "agents", "rnn_hidden"]
        ((q * weights).sum() + h.pow(2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in gru.named_parameters()}
        grads["observation"] = seq["agents", "observation"].grad.clone()
        results[custom] = (q.detach(), h.detach(), grads)
    (q0, h0, g0), (q1, h1, g1) = results[False], results[True]
    torch.testing.assert_close(q1, q0, atol=1e-5, rtol=0)
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_custom_gru_equals_torch_gru_on_packed_sequences(seed):
    """Property: ``_GRUSequence`` on a packed sequence (rows of different lengths) gives the
    outputs and gradients (inputs, initial state, weights) of ``nn.GRU`` on the same
    ``PackedSequence`` to 1e-5; on equal lengths its dense form equals its packed form."""
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

    from resq_torchrl.modules.rnn import _GRUSequence

    g = torch.Generator().manual_seed(seed)
    t, m, h = 9, 7, 5
    rnn = torch.nn.GRU(h, h)
    x = torch.randn(t, m, h, generator=g)
    h0 = torch.randn(m, h, generator=g)
    lengths = torch.randint(1, t + 1, (m,), generator=g)
    lengths[2] = t
    weights = torch.randn(t, m, h, generator=g)

    def run(custom):
        rnn.zero_grad()
        xs, hs = x.clone().requires_grad_(), h0.clone().requires_grad_()
        packed = pack_padded_sequence(xs, lengths, enforce_sorted=False)
        if custom:
            gi = torch.nn.functional.linear(packed.data, rnn.weight_ih_l0, rnn.bias_ih_l0)
            h_sorted = hs.index_select(0, packed.sorted_indices)
            sizes = packed.batch_sizes.tolist()
            data = _GRUSequence.apply(gi, h_sorted, rnn.weight_hh_l0, rnn.bias_hh_l0, sizes)
            packed = PackedSequence(
                data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
            )
        else:
            packed = rnn(packed, hs.unsqueeze(0))[0]
        out = pad_packed_sequence(packed, total_length=t)[0]
        (out * weights).sum().backward()
        return [out.detach(), xs.grad, hs.grad] + [p.grad.clone() for p in rnn.parameters()]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    gi = torch.randn(t, m, 3 * h, generator=g)
    dense = _GRUSequence.apply(gi, h0, rnn.weight_hh_l0, rnn.bias_hh_l0)
    packed = _GRUSequence.apply(
        gi.reshape(t * m, 3 * h), h0, rnn.weight_hh_l0, rnn.bias_hh_l0, [m] * t
    )
    assert torch.equal(dense.reshape(t * m, h), packed)
