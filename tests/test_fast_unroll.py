"""The one-unroll fast path of recurrent losses (``MultiAgentGRU.forward_with_next``) gives the
same losses, priorities and gradients as the plain two passes (unroll, then one step on
``"next"``), and steps aside when the data does not allow it."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import ValueEstimators

from resq_torchrl.modules import rnn
from resq_torchrl.modules.rnn import MultiAgentGRU
from resq_torchrl.training.builders import EnvDims, make_loss, total_loss

N, A, OBS, S = 3, 4, 5, 7
AGENT = {"type": "gru", "hidden_dim": 16, "last_action": True, "agent_id": True}
ALGORITHMS = ["vdn", "qmix", "cw_qmix", "ow_qmix", "qtran", "qplex", "resq", "ddn", "dmix", "resz"]


def episodes(b: int, t: int, seed: int, garbage_padding: bool = True) -> TensorDict:
    """``[b, t]`` whole episodes as the episode replay stores them: each row one episode
    starting at ``t = 0`` (``is_init``), of a random length ``<= t``, ``"next"`` of step ``k``
    equal to step ``k + 1``, then padding (``("collector", "mask")`` False) holding garbage.
    Episodes end terminated or truncated at random; masks are random with at least one
    available action per agent."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(b, t + 1, N, OBS, generator=g)
    state = torch.randn(b, t + 1, S, generator=g)
    action = torch.randint(A, (b, t + 1, N), generator=g)
    mask = torch.rand(b, t + 1, N, A, generator=g) < 0.7
    mask[..., 0] = True
    last = torch.nn.functional.one_hot(action, A).float().roll(1, dims=1)
    last[:, 0] = 0.0
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # one full-length episode
    steps = torch.arange(t).expand(b, t)
    real = steps < lengths.unsqueeze(-1)
    end = steps == (lengths - 1).unsqueeze(-1)
    terminated = end & (torch.rand(b, 1, generator=g) < 0.5)
    truncated = end & ~terminated
    is_init = torch.zeros(b, t + 1, 1, dtype=torch.bool)
    is_init[:, 0] = True
    td = TensorDict(
        {
            ("agents", "observation"): obs[:, :t],
            ("agents", "last_action"): last[:, :t],
            ("agents", "action"): action[:, :t],
            ("agents", "action_mask"): mask[:, :t],
            "state": state[:, :t],
            "is_init": is_init[:, :t],
            ("collector", "mask"): real,
            ("next", "agents", "observation"): obs[:, 1:],
            ("next", "agents", "last_action"): last[:, 1:],
            ("next", "agents", "action_mask"): mask[:, 1:],
            ("next", "state"): state[:, 1:],
            ("next", "is_init"): is_init[:, 1:],
            ("next", "reward"): torch.randn(b, t, 1, generator=g),
            ("next", "terminated"): terminated.unsqueeze(-1),
            ("next", "truncated"): truncated.unsqueeze(-1),
            ("next", "done"): (terminated | truncated).unsqueeze(-1),
        },
        batch_size=[b, t],
    )
    if garbage_padding:  # what follows an episode's end is not its continuation
        pad = ~real
        td["agents", "observation"][pad] = torch.randn(int(pad.sum()), N, OBS, generator=g)
        td["next", "agents", "observation"][pad] = 7.0
    return td


def build(algorithm: str, seed: int, td_lambda: float):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(f"configs/algorithm/{algorithm}.yaml"))
    torch.manual_seed(seed)
    loss = make_loss(cfg, AGENT, EnvDims(N, A, OBS, S), "cpu")
    if td_lambda > 0:
        loss.make_value_estimator(ValueEstimators.TDLambda, gamma=0.99, lmbda=td_lambda)
    # targets differ from the online networks, as after some training
    with torch.no_grad():
        for name, value in loss.named_buffers():
            if name.startswith("target_") and value.is_floating_point():
                value.add_(0.05 * torch.randn_like(value))
    return loss


def run(loss, td: TensorDict, fast: bool, pack: bool = True):
    loss.fast_unroll, loss.pack_padding = fast, pack
    data = td.clone()
    torch.manual_seed(123)  # the distributional losses draw their quantile fractions
    out = loss(data)
    loss.zero_grad()
    total_loss(out).backward()
    grads = {n: p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None}
    priority = data.get("td_error")[data.get(("collector", "mask"))]
    return out, priority, grads


def assert_same_run(fast, plain) -> None:
    """Two :func:`run` results agree: every loss term and diagnostic and the priorities to
    1e-5, every parameter gradient to 1e-5 (absolute) / 1e-4 (relative)."""
    (out, prio, grads), (plain_out, plain_prio, plain_grads) = fast, plain
    assert set(plain_out.keys()) == set(out.keys())
    for key in plain_out.keys():
        torch.testing.assert_close(out[key], plain_out[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(prio, plain_prio, atol=1e-5, rtol=1e-5)
    assert plain_grads.keys() == grads.keys() and plain_grads
    for name in plain_grads:
        torch.testing.assert_close(grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("td_lambda", [0.0, 0.6])
@pytest.mark.parametrize("pack", [True, False])
def test_fast_unroll_equals_two_passes(algorithm, td_lambda, pack, monkeypatch):
    """Property: on whole padded episodes, every loss term, diagnostic, per-step priority
    (real steps) and parameter gradient of the fast path equals the plain path's to 1e-5,
    with the unrolls over the real steps only (``pack``: packed sequences, whatever the
    share of padding) or over every step."""
    monkeypatch.setattr(rnn, "PACK_MAX_FILL", 1.0)
    loss = build(algorithm, seed=0, td_lambda=td_lambda)
    td = episodes(b=5, t=9, seed=1)
    plain = run(loss, td, fast=False)
    assert_same_run(run(loss, td, fast=True, pack=pack), plain)


@pytest.mark.parametrize("algorithm", ["qmix", "resq", "resz"])
@pytest.mark.parametrize("pack", [True, False])
def test_the_unroll_cuda_takes_equals_two_passes(algorithm, pack, monkeypatch):
    """Off the CPU the unrolls with gradient run through torch's GRU and autograd (dense or
    packed), not the hand-written backward: that path's fast unroll gives the plain path's
    loss terms, priorities and gradients (with the hand-written backward) to 1e-5."""
    monkeypatch.setattr(rnn, "PACK_MAX_FILL", 1.0)
    loss = build(algorithm, seed=0, td_lambda=0.6)
    td = episodes(b=5, t=9, seed=1)
    plain = run(loss, td, fast=False)
    nets = [
        m
        for name in loss._agent_network_names
        for m in getattr(loss, name).modules()
        if hasattr(m, "custom_backward")
    ]
    assert nets
    calls = []
    monkeypatch.setattr(rnn._GRUSequence, "apply", lambda *a: calls.append(a))
    for net in nets:
        monkeypatch.setattr(net, "custom_backward", False)
    fast = run(loss, td, fast=True, pack=pack)
    assert not calls  # the hand-written backward was not used
    assert_same_run(fast, plain)


def test_fast_path_is_taken_on_whole_episodes_and_declined_otherwise():
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=16)
    td = episodes(b=4, t=6, seed=2)
    valid = td.get(("collector", "mask"))
    with set_recurrent_mode(True):
        both = gru.forward_with_next(td.copy(), valid)
        assert both is not None
        out, out_next = both
        plain = gru(td.copy())
    with set_recurrent_mode(False):
        step = gru(plain.get("next").copy())
    real = valid
    torch.testing.assert_close(
        out["agents", "action_value"][real],
        plain["agents", "action_value"][real],
        atol=1e-5,
        rtol=0,
    )
    torch.testing.assert_close(
        out_next["agents", "action_value"][real],
        step["agents", "action_value"][real],
        atol=1e-5,
        rtol=0,
    )
    assert not out_next["agents", "action_value"].requires_grad

    # a real step that does not continue the previous one: an episode restarting mid-row
    restart = td.clone()
    restart["is_init"][0, 3] = True
    with set_recurrent_mode(True):
        assert gru.forward_with_next(restart, restart.get(("collector", "mask"))) is None
    # or inputs that differ from the previous step's "next"
    broken = td.clone()
    broken["agents", "observation"][0, 2] += 1.0
    with set_recurrent_mode(True):
        assert gru.forward_with_next(broken, broken.get(("collector", "mask"))) is None
        # a padded step may hold anything, but without a padding mask every step counts
        padded = td.clone()
        padded["collector", "mask"][1, -1] = False
        padded["agents", "observation"][1, -1] = 99.0
        assert gru.forward_with_next(padded.copy(), padded["collector", "mask"]) is not None
        assert gru.forward_with_next(padded.copy(), None) is None


@pytest.mark.parametrize("algorithm", ["qmix", "resq"])
def test_losses_agree_when_the_fast_path_declines(algorithm, monkeypatch):
    """Rows holding back-to-back episodes (a restart mid-row, at a real step of the row that
    runs the whole sample): the fast path declines and the loss is the plain one."""
    loss = build(algorithm, seed=3, td_lambda=0.6)
    td = episodes(b=3, t=8, seed=4, garbage_padding=False)
    assert bool(td["collector", "mask"][0].all())  # row 0 is real at every step
    td["is_init"][0, 4] = True
    td["agents", "last_action"][0, 4] = 0.0
    td["next", "agents", "last_action"][0, 3] = 0.0
    plain, _, plain_grads = run(loss, td, fast=False)
    declined = []
    original = MultiAgentGRU.forward_with_next

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        declined.append(out is None)
        return out

    monkeypatch.setattr(MultiAgentGRU, "forward_with_next", spy)
    fast, _, fast_grads = run(loss, td, fast=True)
    assert declined and all(declined)  # the fast path was asked, and said no
    for key in plain.keys():
        torch.testing.assert_close(fast[key], plain[key], atol=1e-6, rtol=1e-6, msg=key)
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5)


def test_shared_inputs_are_rebuilt_when_the_batch_changes_in_place():
    """The time-major inputs built once per batch (shared by a loss's networks) are reused
    only while the source tensors are unmodified: an in-place change of the observations,
    or of a last action, gives the plain path's new utilities, never the stale ones."""
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=16)
    td = episodes(b=3, t=5, seed=5, garbage_padding=False)

    def fast_and_plain():
        with set_recurrent_mode(True):
            out, _ = gru.forward_with_next(td.copy(), None)
            plain = gru(td.copy())
        return out["agents", "action_value"], plain["agents", "action_value"]

    first, plain = fast_and_plain()
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=0)
    for key in (("agents", "observation"), ("agents", "last_action")):
        # the same edit on both sides keeps step t+1 the "next" of step t
        td[key][:, 2].add_(0.5)
        td[("next", *key)][:, 1].add_(0.5)
        again, plain = fast_and_plain()
        torch.testing.assert_close(again, plain, atol=1e-5, rtol=0)
        assert not torch.allclose(again, first)
        first = again


def test_shared_inputs_handle_inference_tensors_and_end_with_the_loss_call():
    """Data made under ``torch.inference_mode`` (no version counter) takes the fast path
    uncached, and a loss call lets go of the inputs its networks shared."""
    from resq_torchrl.modules import rnn

    rnn.clear_shared_inputs()  # what an earlier direct call of forward_with_next kept
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=16)
    with torch.inference_mode():
        td = episodes(b=2, t=4, seed=6, garbage_padding=False)
        with set_recurrent_mode(True):
            out, _ = gru.forward_with_next(td.copy(), None)
            plain = gru(td.copy())
    torch.testing.assert_close(out["agents", "action_value"], plain["agents", "action_value"])
    assert not rnn._LAST_EXTENDED
    loss = build("resq", seed=0, td_lambda=0.6)
    run(loss, episodes(b=3, t=5, seed=7), fast=True)
    assert not rnn._LAST_EXTENDED, "a batch outlived the loss call that used it"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_direct_feedforward_agents_equal_the_tensordict_path(algorithm):
    """Property: with MLP agents, calling a plain TensorDictModule's module on its input
    (``direct_feedforward``) gives every loss term, priority and gradient of the TensorDict
    path, on one-step data with a "next" entry (the matrix game's layout)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(f"configs/algorithm/{algorithm}.yaml"))
    mlp = {"type": "mlp", "hidden": [16], "agent_id": True}
    torch.manual_seed(0)
    loss = make_loss(cfg, mlp, EnvDims(N, A, OBS, S), "cpu")
    td = episodes(b=6, t=1, seed=8, garbage_padding=False).squeeze(1)
    # the plain agents take the direct path (IQN agents and QTRAN's, with features, do not)
    plain = algorithm not in ("qtran", "ddn", "dmix", "resz")
    assert loss._is_direct(loss._bound("agent_network")) == plain
    if not plain:
        return  # both settings take the TensorDict path (asserted above): nothing to compare
    results = {}
    for direct in (True, False):
        loss.direct_feedforward = direct
        results[direct] = run(loss, td, fast=True)
    (a, pa, ga), (b, pb, gb) = results[True], results[False]
    for key in b.keys():
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-6, msg=key)
    torch.testing.assert_close(pa, pb)
    assert ga.keys() == gb.keys() and ga
    for name in gb:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("algorithm", ["qmix", "qtran", "resq", "resz"])
@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_flat_optimizer_steps_equal_the_per_parameter_optimizer(algorithm, optimizer):
    """``make_optimizer(flat=True)`` (what the matrix-game trainer uses) trains bit for bit
    like the per-parameter optimizer: same batches, clipping, target updates, 60 updates."""
    dims = EnvDims(n_agents=2, n_actions=3, obs_dim=1, state_dim=1)
    cfg = _algorithm_cfg(algorithm)
    trained = [
        _train_matrix_game(cfg, dims, optimizer=optimizer, flat=flat, steps=60)[0]
        for flat in (False, True)
    ]
    plain, flat = trained
    assert (plain == flat).all(), "the flat optimizer changed the training"
    assert not (plain == TensorDict.from_module(_fresh(cfg, dims))).all()  # it did train


def _train_matrix_game(cfg, dims, *, optimizer, flat, steps, one_step=False):
    """``steps`` updates of a loss built after ``torch.manual_seed(0)`` on the matrix game
    (batches of 32, lr 0.01, clipping at 1 so that it bites, targets every 7 updates):
    returns the trained parameters and each update's ``(loss_td, priorities)``."""
    from resq_torchrl.envs import MatrixGameEnv
    from resq_torchrl.training.builders import (
        gradient_step,
        make_optimizer,
        make_target_updater,
    )

    torch.manual_seed(0)
    env = MatrixGameEnv(batch_size=[32])
    loss = make_loss(cfg, {"hidden": [16], "agent_id": True}, dims, "cpu")
    loss.one_step = one_step
    opt = make_optimizer(loss, optimizer, lr=0.01, flat=flat)
    updater = make_target_updater(loss, interval=7)
    history = []
    for _ in range(steps):
        batch = env.rand_transition()
        losses, _ = gradient_step(loss, opt, batch, grad_clip=1.0)
        updater.step()
        history.append((losses["loss_td"].detach().clone(), batch["td_error"].clone()))
    return TensorDict.from_module(loss).clone(), history


def _algorithm_cfg(name: str) -> dict:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "algorithm"
    return yaml.safe_load((root / f"{name}.yaml").read_text())


def _fresh(cfg, dims):
    torch.manual_seed(0)
    return make_loss(cfg, {"hidden": [16], "agent_id": True}, dims, "cpu")


def test_flatten_parameters_refuses_mixed_dtypes():
    from resq_torchrl.training.builders import flatten_parameters

    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2).double())]
    with pytest.raises(ValueError, match="one dtype and device"):
        flatten_parameters(params)


def test_packed_unrolls_compute_only_the_real_steps():
    """Property: with a padding mask, ``forward_current`` and ``forward_with_next`` give the
    plain forward's utilities and states at the real steps (1e-5) and states of exactly 0
    at the padded ones (they were never computed); without packing the padded states are
    the GRU's."""
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=16)
    td = episodes(b=6, t=7, seed=9)
    valid = td.get(("collector", "mask"))
    assert valid.float().mean() <= rnn.PACK_MAX_FILL  # enough padding to pack
    with set_recurrent_mode(True):
        plain = gru(td.copy())
        cur = gru.forward_current(td.copy(), valid)
        out, out_next = gru.forward_with_next(td.copy(), valid)
        dense = gru.forward_current(td.copy(), valid, pack=False)
    key, hidden = ("agents", "action_value"), ("next", "agents", "rnn_hidden")
    # forward_with_next also computes the step after the last real one (its next values)
    after = valid.clone()
    after[:, 1:] |= valid[:, :-1]
    for got, computed in ((cur, valid), (out, after)):
        torch.testing.assert_close(got[key][valid], plain[key][valid], atol=1e-5, rtol=0)
        torch.testing.assert_close(got[hidden][valid], plain[hidden][valid], atol=1e-5, rtol=0)
        assert (got[hidden][~computed] == 0).all() and (~computed).any()
    assert (dense[hidden][~valid] != 0).any()
    torch.testing.assert_close(dense[key], plain[key], atol=1e-6, rtol=0)
    # the next values of the last real step were computed (a truncated episode needs them)
    with set_recurrent_mode(False):
        step = gru(plain.get("next").copy())
    torch.testing.assert_close(out_next[key][valid], step[key][valid], atol=1e-5, rtol=0)


def test_mostly_full_batches_are_not_packed():
    """Property: when more than ``PACK_MAX_FILL`` of the steps are real, every step is
    computed (packing would not pay): the padded states are the GRU's, as without packing."""
    torch.manual_seed(0)
    gru = MultiAgentGRU(OBS, A, N, hidden_dim=16)
    td = episodes(b=6, t=7, seed=9, garbage_padding=False)
    valid = td.get(("collector", "mask")).clone()
    valid[:, :-1] = True  # 6/7 of the steps real
    td["collector", "mask"] = valid
    with set_recurrent_mode(True):
        cur = gru.forward_current(td.copy(), valid)
        dense = gru.forward_current(td.copy(), valid, pack=False)
    hidden = ("next", "agents", "rnn_hidden")
    assert torch.equal(cur[hidden], dense[hidden]) and (cur[hidden][~valid] != 0).any()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_training_is_bitwise_the_full_passes(algorithm):
    """Property: ``loss.one_step`` (what the matrix-game trainers set: no next-state passes
    on all-terminal data) trains every method bit for bit like the full passes: 40 updates
    of Adam with clipping and target updates give identical parameters, losses and
    priorities, and the random stream ends where it does without it (the distributional
    losses' target fractions are still drawn)."""
    dims = EnvDims(n_agents=2, n_actions=3, obs_dim=1, state_dim=1)
    cfg = _algorithm_cfg(algorithm)
    runs = []
    for one_step in (False, True):
        params, history = _train_matrix_game(
            cfg, dims, optimizer="adam", flat=True, steps=40, one_step=one_step
        )
        runs.append((params, history, torch.rand(3)))
    (params_a, hist_a, next_a), (params_b, hist_b, next_b) = runs
    assert (params_a == params_b).all(), "one_step changed the training"
    for (la, pa), (lb, pb) in zip(hist_a, hist_b, strict=True):
        assert torch.equal(la, lb) and torch.equal(pa, pb)
    assert torch.equal(next_a, next_b), "one_step changed the random stream"
    assert not (params_b == TensorDict.from_module(_fresh(cfg, dims))).all()  # it did train


def test_one_step_refuses_data_that_does_not_terminate():
    """A loss told its data is one-step raises on a sample that does not terminate (a
    silent skip would drop its bootstrap), naming the flag to clear."""
    from resq_torchrl.envs import MatrixGameEnv

    dims = EnvDims(n_agents=2, n_actions=3, obs_dim=1, state_dim=1)
    loss = make_loss(_algorithm_cfg("resq"), {"hidden": [16], "agent_id": True}, dims, "cpu")
    loss.one_step = True
    batch = MatrixGameEnv(batch_size=[8]).rand_transition()
    loss(batch)  # all terminal: fine
    batch["next", "terminated"][:3] = False
    with pytest.raises(ValueError, match=r"one_step=True, but 3 of the samples do not terminate"):
        loss(batch)


def test_one_step_vectorized_training_equals_the_full_passes(monkeypatch):
    """The vmapped matrix-game trainer with ``one_step`` (its default) gives the same
    evaluation, bit for bit, as with every next-state pass run (ResZ: fractions drawn
    under vmap's per-seed randomness; QPLEX: its own bootstrap)."""
    from omegaconf import OmegaConf

    from resq_torchrl.objectives.common import ValueFactorizationLoss
    from resq_torchrl.training.matrix_game import train_matrix_game_vectorized

    base = OmegaConf.to_container(OmegaConf.load("configs/matrix_game.yaml"))
    base = {k: v for k, v in base.items() if k not in ("defaults", "hydra")}
    for name in ("resz", "qplex"):
        cfg = dict(base, algorithm=_algorithm_cfg(name), n_updates=25, progress=False)
        cfg["agent"] = {"hidden": [16], "agent_id": True}
        fast = train_matrix_game_vectorized(cfg, [0, 1, 2])
        with monkeypatch.context() as m:
            # the trainer's `loss.one_step = True` is then ignored: every pass runs
            m.setattr(
                ValueFactorizationLoss, "one_step", property(lambda s: False, lambda s, v: None)
            )
            full = train_matrix_game_vectorized(cfg, [0, 1, 2])
        assert fast == full, f"{name}: one_step changed the vectorised training"


@pytest.mark.parametrize("eps", [1e-5, 1e-8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_adam_equals_torch_adam_bit_for_bit(eps, dtype):
    """``FlatAdam`` (no ``sqrt`` of exact zeros) steps like ``torch.optim.Adam(foreach=True)``
    to the bit: a flat parameter of which a third never gets a gradient (its second moment
    stays exactly 0), another third only now and then, 300 steps under a cosine schedule,
    gradients spanning 1e-20..1e3; then the same state dict keys."""
    from resq_torchrl.training.builders import FlatAdam

    n = 3000
    start = torch.randn(n, dtype=dtype)
    params, opts = [], []
    for cls in (torch.optim.Adam, FlatAdam):
        p = torch.nn.Parameter(start.clone())
        params.append(p)
        opts.append(cls([p], lr=0.01, eps=eps, foreach=True))
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, 300) for o in opts]
    gen = torch.Generator().manual_seed(0)
    for step in range(300):
        scale = 10.0 ** torch.randint(-20, 4, (n,), generator=gen).to(dtype)
        grad = torch.randn(n, generator=gen, dtype=dtype) * scale
        grad[: n // 3] = 0  # never a gradient
        if step % 7:
            grad[n // 3 : 2 * n // 3] = 0  # a gradient now and then
        for p in params:
            p.grad = grad.clone()
        assert opts[1]._plain()  # FlatAdam takes its own step, not torch's
        for o, s in zip(opts, scheds, strict=True):
            o.step()
            s.step()
        assert torch.equal(params[0], params[1]), f"step {step}"
    torch_state, flat_state = (o.state_dict()["state"][0] for o in opts)
    assert torch_state.keys() == flat_state.keys()
    for key in torch_state:
        assert torch.equal(torch_state[key], flat_state[key]), key
        assert torch_state[key].dtype == flat_state[key].dtype, key


def test_flat_adam_takes_torchs_step_for_other_options():
    """Options the hand-written step does not cover (weight decay, amsgrad, an ``eps`` too
    small for the clamp to round away) take torch's own step, so they still work."""
    from resq_torchrl.training.builders import FlatAdam

    plain = torch.nn.Parameter(torch.ones(4))
    plain.grad = torch.ones(4)
    assert FlatAdam([plain], lr=0.1)._plain()  # the default options: its own step
    for kwargs in ({"weight_decay": 0.1}, {"amsgrad": True}, {"eps": 0.0}):
        p = torch.nn.Parameter(torch.ones(4))
        q = torch.nn.Parameter(torch.ones(4))
        a = FlatAdam([p], lr=0.1, **kwargs)
        b = torch.optim.Adam([q], lr=0.1, **kwargs)
        p.grad = torch.ones(4)
        assert not a._plain(), kwargs
        for _ in range(3):
            p.grad = torch.tensor([0.0, 1.0, -2.0, 3.0])
            q.grad = p.grad.clone()
            a.step()
            b.step()
        torch.testing.assert_close(p, q, rtol=0, atol=0, equal_nan=True, msg=str(kwargs))


@pytest.mark.parametrize("algorithm", ["vdn", "ddn"])
@pytest.mark.parametrize("fast,pack", [(False, False), (True, False), (True, True)])
def test_sum_mixers_need_no_state(algorithm, fast, pack, monkeypatch):
    """Property: VDN and DDN (sums of the agents' values) do not read the global state, so
    data without one (a PettingZoo env without a state, a user's own batch) give the same
    losses, priorities and gradients, bit for bit, on every unroll path; a loss whose
    mixer reads the state still names the missing key."""
    monkeypatch.setattr(rnn, "PACK_MAX_FILL", 1.0)
    loss = build(algorithm, seed=0, td_lambda=0.6)
    assert "state" not in loss.in_keys and ("next", "state") not in loss.in_keys
    td = episodes(b=5, t=9, seed=1)
    with_state, prio, grads = run(loss, td, fast=fast, pack=pack)
    stateless = td.exclude("state", ("next", "state"))
    out, prio_ns, grads_ns = run(loss, stateless, fast=fast, pack=pack)
    assert set(out.keys()) == set(with_state.keys())
    for key in out.keys():
        assert torch.equal(out[key], with_state[key]), key
    assert torch.equal(prio_ns, prio)
    assert grads_ns.keys() == grads.keys() and grads
    assert all(torch.equal(grads_ns[k], grads[k]) for k in grads)
    # nor does a state they do not read steer them (DDN drew its fractions on its device)
    elsewhere = td.clone()
    for key in ("state", ("next", "state")):
        elsewhere[key] = elsewhere[key].to("meta")
    out_meta, _, _ = run(loss, elsewhere, fast=fast, pack=pack)
    assert torch.equal(out_meta["loss_td"], with_state["loss_td"])
    qmix = build("qmix", seed=0, td_lambda=0.0)
    with pytest.raises(KeyError, match=r"no key \('next', 'state'\)"):
        qmix(stateless.clone())
