"""Behaviour of VDNLoss, QMIXLoss and ResQLoss on hand-built transitions."""

import io

import pytest
import torch
from tensordict import TensorDict

from resq_torchrl.modules import FeedForwardMixer, QMixer, VDNMixer, make_agent_qnet
from resq_torchrl.objectives import QMIXLoss, ResQLoss, VDNLoss
from resq_torchrl.training import make_target_updater, total_loss

GAMMA = 0.9
# by_obs tables: [0] = utilities at the current state (obs 0), [1] = at the next state (obs 1)
MAIN = [[[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]], [[0.0, 5.0, 1.0], [2.0, 0.0, 1.0]]]
CENTRAL = [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[10.0, 20.0, 30.0], [1.0, 2.0, 3.0]]]


def resq_loss(make_table_qnet, residual_sign="abs", main=MAIN, central=CENTRAL, **kwargs):
    torch.manual_seed(0)
    return ResQLoss(
        make_table_qnet(main, by_obs=True),
        VDNMixer(2, device=None),
        residual_mixer=FeedForwardMixer(2, 1, embed_dim=16),
        central_mixer=VDNMixer(2, device=None),
        residual_agent_network=make_agent_qnet(1, 3, 2, hidden=(8,)),
        central_agent_network=make_table_qnet(central, by_obs=True),
        residual_sign=residual_sign,
        gamma=GAMMA,
        **kwargs,
    )


# ---------------------------------------------------------------- ResQ decomposition
def test_w_r_is_zero_exactly_at_the_greedy_joint_action(make_table_qnet, make_transition):
    loss = resq_loss(make_table_qnet)  # current main utilities: greedy (A, C) = (0, 2)
    td = make_transition([[0, 2], [0, 1], [1, 2], [2, 0]], [0, 0, 0, 0], [1, 1, 1, 1])
    joint = loss.joint_q(td)
    assert joint["greedy_action"].tolist() == [[0, 2]] * 4
    assert joint["w_r"].squeeze(-1).tolist() == [0.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(joint["q_jt"], joint["q_tot"] + joint["w_r"] * joint["q_r"])
    torch.testing.assert_close(joint["q_jt"][0], joint["q_tot"][0])
    # Q_tot by hand (VDN main mixer): Q_1(u_1) + Q_2(u_2)
    assert joint["q_tot"].squeeze(-1).tolist() == [3.0, 1.0, 2.0, 0.0]


def test_w_r_uses_the_masked_greedy_action(make_table_qnet, make_transition):
    loss = resq_loss(make_table_qnet)
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    mask[:, 0, 0] = False  # agent 1 may not play A: its greedy action becomes B (first of ties)
    td = make_transition([[1, 2], [0, 2]], [0, 0], [1, 1], mask=mask)
    joint = loss.joint_q(td)
    assert joint["greedy_action"].tolist() == [[1, 2], [1, 2]]
    assert joint["w_r"].squeeze(-1).tolist() == [0.0, 1.0]


def test_residual_sign_abs_is_minus_abs_of_the_penalty_mode_residual(
    make_table_qnet, make_transition
):
    abs_loss = resq_loss(make_table_qnet, "abs")
    raw_loss = resq_loss(make_table_qnet, "penalty")
    raw_loss.load_state_dict(abs_loss.state_dict())
    td = make_transition(torch.randint(3, (64, 2)), torch.randn(64), torch.ones(64))
    q_r_abs = abs_loss.joint_q(td)["q_r"]
    r = raw_loss.joint_q(td)["q_r"]
    assert (q_r_abs <= 0).all()
    torch.testing.assert_close(q_r_abs, -r.abs())


def test_penalty_mode_adds_relu_squared_of_the_residual(make_table_qnet, make_transition):
    loss = resq_loss(make_table_qnet, "penalty")
    with torch.no_grad():  # make the raw residual positive somewhere
        loss.residual_mixer_params["V", "2", "bias"].fill_(3.0)
    td = make_transition(torch.randint(3, (32, 2)), torch.randn(32), torch.ones(32))
    q_r = loss.joint_q(td)["q_r"]
    assert (q_r > 0).any()
    out = loss(td)
    torch.testing.assert_close(out["loss_residual_sign"], torch.relu(q_r).pow(2).mean())
    assert "loss_residual_sign" not in resq_loss(make_table_qnet, "abs")(td).keys()


def test_cw_tot_weighting_scales_only_the_gradient_reaching_q_tot(make_table_qnet, make_transition):
    """``tot_weighting="cw"``: same ``Q_jt`` and loss value as the paper's loss; the main
    agents' gradient is the paper's gradient through ``Q_tot`` with each sample's
    ``dloss_td/dQ_tot`` scaled by ``w_tot`` (1 at the greedy action or where ``Q_tot < y``,
    alpha elsewhere), and the residual networks get exactly the paper's gradient."""
    plain = resq_loss(make_table_qnet)
    cw = resq_loss(make_table_qnet, tot_weighting="cw", tot_weight_alpha=0.25)
    cw.load_state_dict(plain.state_dict())
    # greedy (A, C); rewards put y far below Q_tot for samples 1 and 3, above for sample 2
    td = make_transition([[0, 2], [0, 1], [1, 2], [2, 0]], [-50, -50, 50, -50], [1, 1, 1, 1])
    main = list(plain.agent_network_params.values(True, True))
    joint = plain.joint_q(td, with_next=True)
    y = plain.central_target(td, joint["next_greedy_action"])
    q_jt = joint["q_tot"] + joint["w_r"] * joint["q_r"]
    d_q_tot = 2 * (q_jt - y).detach() / q_jt.numel()  # dloss_td/dQ_tot per sample (paper)
    assert (joint["q_tot"] < y).squeeze(-1).tolist() == [False, False, True, False]
    w_tot = torch.tensor([[1.0], [0.25], [1.0], [0.25]])  # greedy / over / under / over
    expected = torch.autograd.grad(joint["q_tot"], main, grad_outputs=w_tot * d_q_tot)

    out_p, out_c = plain(td), cw(td)
    torch.testing.assert_close(out_c["loss_td"], out_p["loss_td"])
    torch.testing.assert_close(out_c["q_jt_mean"], out_p["q_jt_mean"])
    torch.testing.assert_close(out_c["w_tot_mean"], w_tot.mean())
    for loss, out in ((plain, out_p), (cw, out_c)):
        loss.zero_grad()
        total_loss(out).backward()
    got = [p.grad for p in cw.agent_network_params.values(True, True)]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)
    for name in ("residual_agent_network_params", "residual_mixer_params"):
        for a, b in zip(
            getattr(plain, name).values(True, True),
            getattr(cw, name).values(True, True),
            strict=True,
        ):
            torch.testing.assert_close(b.grad, a.grad)


def test_unknown_tot_weighting_is_rejected(make_table_qnet):
    with pytest.raises(ValueError, match="tot_weighting"):
        resq_loss(make_table_qnet, tot_weighting="ow")
    with pytest.raises(ValueError, match="tot_weight_alpha"):
        resq_loss(make_table_qnet, tot_weighting="cw", tot_weight_alpha=0.0)


def test_unknown_residual_sign_is_rejected(make_table_qnet):
    with pytest.raises(ValueError, match="residual_sign"):
        resq_loss(make_table_qnet, "relu")


def test_a_negative_central_loss_weight_is_rejected(make_table_qnet):
    """A negative weight would train Q* away from its targets (ResQ, Weighted QMIX, ResZ
    check it; QTRAN already checked its own)."""
    with pytest.raises(ValueError, match="central_loss_coef must be >= 0, got -1"):
        resq_loss(make_table_qnet, central_loss_coef=-1.0)


@pytest.mark.parametrize("coef", [0.0, -1.0])
def test_a_penalty_of_no_weight_is_rejected(make_table_qnet, coef):
    """A sign penalty of weight 0 would train the raw, sign-free residual (the released
    code's behaviour, which the paper's Q_r <= 0 excludes)."""
    with pytest.raises(ValueError, match="residual_sign_coef must be > 0"):
        resq_loss(make_table_qnet, "penalty", residual_sign_coef=coef)
    resq_loss(make_table_qnet, "abs", residual_sign_coef=0.0)  # unused with -|R|


# ---------------------------------------------------------------- targets
def test_resq_target_is_target_central_q_at_the_online_greedy_next_action(
    make_table_qnet, make_transition
):
    loss = resq_loss(make_table_qnet)
    with torch.no_grad():  # online central values move; the target copy keeps the old ones
        loss.central_agent_network_params["module", "table"].add_(100.0)
    td = make_transition([[0, 2], [1, 1]], [1.0, -2.0], [0, 0])
    out = loss(td)
    # online main next utilities: agent 1 (0, 5, 1) -> B, agent 2 (2, 0, 1) -> A
    # target central at (B, A): 20 + 1 = 21
    expected = torch.tensor([[1.0 + GAMMA * 21], [-2.0 + GAMMA * 21]])
    torch.testing.assert_close(out["target_mean"], expected.mean())
    joint = loss.joint_q(td)
    torch.testing.assert_close(td["td_error"], (joint["q_jt"] - expected).abs())


def test_resq_target_skips_unavailable_next_actions_and_stops_at_termination(
    make_table_qnet, make_transition
):
    loss = resq_loss(make_table_qnet)
    next_mask = torch.ones(3, 2, 3, dtype=torch.bool)
    next_mask[:, 0, 1] = False  # agent 1 may not play B next: greedy (C, A) -> 30 + 1 = 31
    next_mask[2] = False  # a terminal next state may carry no available action at all
    td = make_transition([[0, 0]] * 3, [1.0, 1.0, 4.0], [0, 0, 1], next_mask=next_mask)
    td["next", "truncated"][1] = True  # truncation still bootstraps
    loss(td)
    joint = loss.joint_q(td)
    expected = torch.tensor([[1.0 + GAMMA * 31], [1.0 + GAMMA * 31], [4.0]])
    torch.testing.assert_close(td["td_error"], (joint["q_jt"] - expected).abs())


def test_qmix_double_q_uses_online_greedy_and_target_values(make_table_qnet, make_transition):
    loss = QMIXLoss(make_table_qnet(MAIN, by_obs=True), VDNMixer(2, device=None), gamma=GAMMA)
    with torch.no_grad():
        loss.agent_network_params["module", "table"][1] = torch.tensor(
            [[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]]
        )
    td = make_transition([[0, 0]], [2.0], [0])
    out = loss(td)
    # online next greedy (A, C); target (construction-time) values there: 0 + 1 = 1
    torch.testing.assert_close(out["target_mean"], torch.tensor(2.0 + GAMMA * 1.0))


def test_vdn_q_tot_is_the_sum_of_chosen_utilities(make_table_qnet, make_transition):
    loss = VDNLoss(make_table_qnet(MAIN, by_obs=True), n_agents=2, gamma=GAMMA)
    td = make_transition([[0, 2], [1, 0]], [3.0, 0.0], [1, 1])
    joint = loss.joint_q(td)
    assert joint["q_tot"].squeeze(-1).tolist() == [3.0, 0.0]
    out = loss(td)
    torch.testing.assert_close(out["loss_td"], torch.tensor(((3 - 3) ** 2 + 0**2) / 2.0))


# ---------------------------------------------------------------- gradients and targets
def _make_all(make_table_qnet):
    torch.manual_seed(0)
    return {
        "vdn": VDNLoss(make_agent_qnet(1, 3, 2), n_agents=2),
        "qmix": QMIXLoss(make_agent_qnet(1, 3, 2), QMixer(2, 1, 8, 16)),
        "resq": ResQLoss(
            make_agent_qnet(1, 3, 2),
            QMixer(2, 1, 8, 16),
            FeedForwardMixer(2, 1, 16),
            FeedForwardMixer(2, 1, 16),
        ),
    }


@pytest.mark.parametrize("name", ["vdn", "qmix", "resq"])
def test_gradients_never_reach_target_parameters(name, make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)[name]
    updater = make_target_updater(loss, interval=3)
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    targets = [k for k, _ in loss.named_children() if k.startswith("target_")]
    assert targets
    before = {k: getattr(loss, k).clone() for k in targets}
    online_before = [p.detach().clone() for p in loss.parameters()]
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    for step in range(2):
        opt.zero_grad()
        total_loss(loss(td)).backward()
        opt.step()
        updater.step()
        for k in targets:
            tp = getattr(loss, k)
            assert all(not v.requires_grad for v in tp.values(True, True)), k
            assert (tp == before[k]).all(), f"{k} moved at step {step} before the hard update"
    assert any(not torch.equal(a, p) for a, p in zip(online_before, loss.parameters(), strict=True))
    updater.step()  # third step: hard update copies online -> target
    for k in targets:
        online = getattr(loss, k[len("target_") :])
        assert (getattr(loss, k) == online.data).all()


@pytest.mark.parametrize("name", ["qmix", "resq"])
def test_networks_always_run_with_the_current_online_and_target_parameters(
    name, make_table_qnet, make_transition
):
    """The loss binds its parameters to modules once (no swap per call): the values must
    still follow every optimizer step, hard target update, ``load_state_dict`` and a move
    to another dtype, exactly as a fresh loss holding the same parameters computes them."""
    loss = _make_all(make_table_qnet)[name]
    updater = make_target_updater(loss, interval=1)
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))

    for _ in range(2):
        out = loss(td)
        opt.zero_grad()
        total_loss(out).backward()
        opt.step()
        updater.step()  # online moved, then copied into the targets
    out, ref = loss(td), _fresh_like(loss, name, make_table_qnet)(td)
    for key in out.keys():
        torch.testing.assert_close(out[key], ref[key], msg=key)

    other = _make_all(make_table_qnet)[name]
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    for k, _ in other.named_children():
        if k.startswith("target_"):
            getattr(other, k).apply_(lambda x: x - 2.0)
    loss.load_state_dict(other.state_dict())
    out, ref = loss(td), other(td)
    for key in out.keys():
        torch.testing.assert_close(out[key], ref[key], msg=key)

    # new tensors put in the parameter TensorDicts (update, set), online and target, or
    # swapped into a network itself: the loss computes with its parameter TensorDicts,
    # as a fresh loss loaded from its state dict does (it kept the old tensors, silently)
    third, before = _make_all(make_table_qnet)[name], loss(td)
    # new trainable tensors (nn.Parameter; plain tensors would not be parameters at all)
    loss.mixer_params.update(third.mixer_params.data.clone().apply(torch.nn.Parameter))
    loss.target_mixer_params.update(third.mixer_params.data.clone().apply(lambda x: x * 3))
    key = next(iter(loss.agent_network_params.keys(True, True)))
    loss.target_agent_network_params.set(key, third.agent_network_params.get(key).data + 1)
    third.mixer_params.data.clone().apply(lambda x: x - 5).to_module(loss.mixer)
    ref = _fresh_like(loss, name, make_table_qnet)(td)
    assert not torch.equal(ref["q_tot_mean"], before["q_tot_mean"])  # the change shows
    out = loss(td)
    for key in out.keys():
        torch.testing.assert_close(out[key], ref[key], msg=key)
    # and they train: the gradient reaches the tensors the optimizer holds (a rebinding
    # that wrapped them anew left them without one)
    for p in loss.parameters():
        p.grad = None
    total_loss(out).backward()
    mixer_grads = [p.grad for p in loss.mixer_params.values(True, True)]
    assert all(g is not None for g in mixer_grads) and any(bool(g.any()) for g in mixer_grads)

    loss = loss.double()  # new tensors: every binding must follow
    td64 = td.apply(lambda x: x.double() if x.is_floating_point() else x)
    other.load_state_dict(loss.state_dict())
    out, ref = loss(td64), other.double()(td64)
    for key in out.keys():
        assert out[key].dtype == torch.float64
        torch.testing.assert_close(out[key], ref[key], msg=key)


@pytest.mark.parametrize("share_params", [True, False])
@pytest.mark.parametrize("name", ["qmix", "resq"])
def test_torchrls_multi_agent_mlp_serves_as_the_agent_network(name, share_params, make_transition):
    """torchrl's own ``MultiAgentMLP`` (it keeps its parameters in a parameter TensorDict of
    its own) as the agents: the target copies bind (they raised "could not bind"), the
    online parameters train, the targets stay put until a hard update copies them."""
    from tensordict.nn import TensorDictModule
    from torchrl.modules import MultiAgentMLP

    torch.manual_seed(0)

    def agents():
        mlp = MultiAgentMLP(
            n_agent_inputs=1,
            n_agent_outputs=3,
            n_agents=2,
            centralized=False,
            share_params=share_params,
            depth=1,
            num_cells=16,
        )
        return TensorDictModule(
            mlp, in_keys=[("agents", "observation")], out_keys=[("agents", "action_value")]
        )

    if name == "qmix":
        loss = QMIXLoss(agents(), QMixer(2, 1, 8, 16))
    else:
        loss = ResQLoss(
            agents(),
            QMixer(2, 1, 8, 16),
            FeedForwardMixer(2, 1, 16),
            FeedForwardMixer(2, 1, 16),
            central_agent_network=agents(),
        )
    updater = make_target_updater(loss, interval=2)
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    agent = "agent_network" if name == "qmix" else "central_agent_network"  # has targets
    target, online = f"target_{agent}_params", f"{agent}_params"
    assert target in loss._modules
    target_before = getattr(loss, target).clone()
    online_before = getattr(loss, online).data.clone()
    opt = torch.optim.Adam(loss.parameters(), lr=0.01)
    for step in range(2):
        opt.zero_grad()
        total_loss(loss(td)).backward()
        opt.step()
        if step == 0:
            assert (getattr(loss, target) == target_before).all()
        updater.step()
    assert (getattr(loss, online).data != online_before).any()
    assert (getattr(loss, target) == getattr(loss, online).data).all()
    assert all(not v.requires_grad for v in getattr(loss, target).values(True, True))
    assert torch.isfinite(loss(td)["loss_td"])


def _fresh_like(loss, name, make_table_qnet):
    fresh = _make_all(make_table_qnet)[name]
    fresh.load_state_dict(loss.state_dict())
    return fresh


def test_resq_td_loss_does_not_train_the_central_q(make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)["resq"]
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    out = loss(td)
    central = list(loss.central_agent_network_params.values(True, True))
    main = list(loss.agent_network_params.values(True, True))
    grads = torch.autograd.grad(out["loss_td"], central + main, allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads[: len(central)])
    assert any(g is not None and (g != 0).any() for g in grads[len(central) :])


# ---------------------------------------------------------------- keys, state, errors
def _rename(td: TensorDict) -> TensorDict:
    def group(src):
        return TensorDict(
            {"obs": src["agents", "observation"], "avail": src["agents", "action_mask"]},
            batch_size=src["agents"].batch_size,
        )

    out = TensorDict({"team": group(td)}, batch_size=td.batch_size)
    out["team", "act"] = td["agents", "action"]
    out["gstate"] = td["state"]
    nxt = TensorDict({"team": group(td["next"])}, batch_size=td.batch_size)
    nxt.update(
        {
            "gstate": td["next", "state"],
            "rew": td["next", "reward"],
            "term": td["next", "terminated"],
            "fin": td["next", "done"],
        }
    )
    out["next"] = nxt
    out["meta", "valid"] = torch.ones(td.shape, dtype=torch.bool)
    return out


def test_set_keys_renames_every_key(make_table_qnet, make_transition):
    torch.manual_seed(0)
    default = ResQLoss(
        make_agent_qnet(1, 3, 2),
        QMixer(2, 1, 8, 16),
        FeedForwardMixer(2, 1, 16),
        FeedForwardMixer(2, 1, 16),
    )
    renamed = ResQLoss(
        make_agent_qnet(1, 3, 2, in_key=("team", "obs"), out_key=("team", "q")),
        QMixer(2, 1, 8, 16),
        FeedForwardMixer(2, 1, 16),
        FeedForwardMixer(2, 1, 16),
        residual_agent_network=make_agent_qnet(
            1, 3, 2, in_key=("team", "obs"), out_key=("team", "q")
        ),
        central_agent_network=make_agent_qnet(
            1, 3, 2, in_key=("team", "obs"), out_key=("team", "q")
        ),
    )
    before = renamed.in_keys  # read (and cached) before the renaming: must not go stale
    assert "state" in before and "gstate" not in before
    renamed.set_keys(
        action=("team", "act"),
        action_value=("team", "q"),
        action_mask=("team", "avail"),
        state="gstate",
        reward="rew",
        done="fin",
        terminated="term",
        padding_mask=("meta", "valid"),
        priority="prio",
    )
    assert "gstate" in renamed.in_keys and "state" not in renamed.in_keys
    renamed.load_state_dict(default.state_dict())
    td = make_transition(torch.randint(3, (8, 2)), torch.randn(8), torch.zeros(8))
    td2 = _rename(td)
    assert ("agents", "observation") not in td2.keys(True)
    a, b = default(td), renamed(td2)
    for k in a.keys():
        torch.testing.assert_close(a[k], b[k])
    torch.testing.assert_close(td2["prio"], td["td_error"])
    del td2["next", "rew"]
    with pytest.raises(KeyError, match=r"\('next', 'rew'\)"):
        renamed(td2)
    # a name the loss does not have, or utilities the agents do not write: one line, at
    # set_keys, the keys unchanged (torchrl listed its dataclass fields; the second failed
    # at the next call with an AttributeError on None)
    keys = dict(vars(renamed.tensor_keys))
    with pytest.raises(ValueError, match="'observation' is not one of its keys: action, "):
        renamed.set_keys(observation=("agents", "obs"))
    with pytest.raises(ValueError, match=r"action_value=\('agents', 'qv'\) is not written by"):
        renamed.set_keys(action_value=("agents", "qv"), reward="other")
    assert dict(vars(renamed.tensor_keys)) == keys


@pytest.mark.parametrize("name", ["vdn", "qmix", "resq"])
def test_state_dict_round_trip(name, make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)[name]
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    updater = make_target_updater(loss, interval=2)
    td = make_transition(torch.randint(3, (16, 2)), torch.randn(16), torch.zeros(16))
    for _ in range(3):
        opt.zero_grad()
        total_loss(loss(td)).backward()
        opt.step()
        updater.step()
    buf = io.BytesIO()
    torch.save(loss.state_dict(), buf)
    fresh = _make_all(make_table_qnet)[name]
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    a, b = loss(td.clone()), fresh(td.clone())
    for k in a.keys():
        torch.testing.assert_close(a[k], b[k])


@pytest.mark.parametrize("name", ["vdn", "qmix", "resq"])
def test_missing_key_is_named(name, make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)[name]
    td = make_transition([[0, 0]], [1.0], [1])
    del td["next", "reward"]
    with pytest.raises(KeyError, match=r"\('next', 'reward'\)"):
        loss(td)
    td = make_transition([[0, 0]], [1.0], [1])
    del td["agents", "observation"]
    with pytest.raises(KeyError, match=r"\('agents', 'observation'\)"):
        loss(td)


@pytest.mark.parametrize("name", ["vdn", "qmix", "resq"])
def test_a_per_agent_reward_is_named(name, make_table_qnet, make_transition):
    """torchrl's multi-agent envs write a reward per agent: the losses take a team reward,
    and said so only as a failed reshape."""
    loss = _make_all(make_table_qnet)[name]
    td = make_transition([[0, 0], [1, 2]], [1.0, 0.0], [1, 1])
    td["next", "reward"] = torch.ones(2, 2, 1)
    with pytest.raises(ValueError, match=r"has shape \(2, 2, 1\); the losses take one team"):
        loss(td)
    td["next", "reward"] = torch.ones(2)  # [*B] is a team reward too
    loss(td)


@pytest.mark.parametrize("name", ["vdn", "qmix", "resq"])
def test_action_mask_row_without_available_action_is_rejected(
    name, make_table_qnet, make_transition
):
    loss = _make_all(make_table_qnet)[name]
    mask = torch.ones(2, 2, 3, dtype=torch.bool)
    mask[1, 0] = False
    td = make_transition([[0, 0], [1, 1]], [1.0, 1.0], [1, 1], mask=mask)
    with pytest.raises(ValueError, match="no available action"):
        loss(td)
    next_mask = torch.ones(2, 2, 3, dtype=torch.bool)
    next_mask[0, 1] = False  # not terminal: this next state would be bootstrapped from
    td = make_transition([[0, 0], [1, 1]], [1.0, 1.0], [0, 0], next_mask=next_mask)
    with pytest.raises(ValueError, match="no available action") as err:
        loss(td)
    # it says which mask: the next step's (it read like the current step's)
    assert str(err.value).startswith("the next step's ('next', ('agents', 'action_mask'))")


def test_agent_count_mismatch_between_data_and_mixer(make_table_qnet, make_transition):
    loss = QMIXLoss(make_table_qnet(MAIN[0]), QMixer(3, 1, 8, 16))
    td = make_transition([[0, 0]], [1.0], [1])
    with pytest.raises(ValueError, match="the data has 2 agents but mixer was built for 3"):
        loss(td)


def test_padding_mask_excludes_padded_samples(make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)["resq"]
    td = make_transition([[0, 1], [2, 2], [1, 0]], [1.0, 5.0, -3.0], [1, 1, 1])
    td["collector", "mask"] = torch.tensor([True, True, False])
    masked = loss(td)
    first_two = loss(td[:2].exclude(("collector", "mask")))
    for k in ("loss_td", "loss_central", "td_error", "w_r_mean", "q_r_mean"):
        torch.testing.assert_close(masked[k], first_two[k])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resq_runs_on_cuda(make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)["resq"].to("cuda")
    td = make_transition(torch.randint(3, (8, 2)), torch.randn(8), torch.zeros(8)).to("cuda")
    out = loss(td)
    assert out["loss_td"].device.type == "cuda"
    total_loss(out).backward()


def test_mask_at_only_one_of_current_and_next_is_rejected(make_table_qnet, make_transition):
    loss = _make_all(make_table_qnet)["resq"]
    td = make_transition([[0, 0]], [1.0], [0])
    del td["next", "agents", "action_mask"]
    with pytest.raises(KeyError, match=r"\('next', 'agents', 'action_mask'\) is missing"):
        loss(td)


@pytest.mark.parametrize(
    "algo", ["vdn", "qmix", "cw_qmix", "ow_qmix", "qtran", "qplex", "resq", "ddn", "dmix", "resz"]
)
def test_out_keys_name_the_loss_terms_and_a_loss_prints(algo):
    """``loss.out_keys`` lists the ``loss_*`` terms forward writes, as torchrl's losses do
    (``print(loss)`` failed on the missing attribute, for every loss)."""
    from conftest import ROOT
    from omegaconf import OmegaConf

    from resq_torchrl.envs import MatrixGameEnv, payoff_tensor
    from resq_torchrl.training.builders import EnvDims, make_loss

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "algorithm" / f"{algo}.yaml"))
    if algo == "resq":
        cfg["residual_sign"] = "penalty"  # its extra term
    dims = EnvDims(n_agents=2, n_actions=3, obs_dim=1, state_dim=1)
    torch.manual_seed(0)
    loss = make_loss(cfg, {"hidden": [8], "agent_id": True}, dims, "cpu")
    env = MatrixGameEnv(payoff_tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), batch_size=[4])
    out = loss(env.rand_transition())
    assert sorted(k for k in out.keys() if k.startswith("loss_")) == sorted(loss.out_keys)
    assert type(loss).__name__ in repr(loss)


def test_data_on_another_device_is_named(make_transition):
    """Data and parameters on two devices failed inside torch ("Tensor on device cpu is not
    on the expected device meta!"), naming neither."""
    loss = QMIXLoss(make_agent_qnet(1, 3, 2), QMixer(2, 1, 8, 16))
    td = make_transition([[0, 1]], [1.0], [1])
    with pytest.raises(
        RuntimeError, match="the input is on meta but the loss's parameters are on cpu"
    ):
        loss(td.to("meta"))
    loss(td)  # on one device it runs
