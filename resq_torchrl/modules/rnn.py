"""Recurrent per-agent utility network (pymarl's ``RNNAgent``) with an agent dimension.

torchrl's ``GRUModule`` expects ``[*B, T, F]`` inputs and one hidden state per batch element;
agents add a dimension (``[*B, T, N, F]``, one hidden state per agent). Rather than folding
agents into the batch and back around every call, :class:`MultiAgentGRU` is a
``TensorDictModuleBase`` that keeps torchrl's conventions:

* step mode (collection): reads the state at ``("agents", "rnn_hidden")``, zeroes it where
  ``"is_init"`` is set, and writes the new state at ``("next", "agents", "rnn_hidden")``,
  which ``step_mdp`` carries to the next step; :meth:`MultiAgentGRU.make_tensordict_primer`
  gives the env transform that creates the state (and the last action) at reset;
* recurrent mode (``torchrl.modules.set_recurrent_mode(True)``, used by the losses): the
  input is ``[*B, T]`` and the network is unrolled over ``T``, starting from the stored state
  of the first step and restarting from zero wherever ``"is_init"`` is set.

The two modes give the same utilities on the same episodes (tested).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torchrl.data import Composite, Unbounded
from torchrl.envs import TensorDictPrimer
from torchrl.modules import recurrent_mode

from resq_torchrl.modules.layers import check_sizes


def set_next(tensordict: TensorDictBase, key: NestedKey, value: torch.Tensor) -> None:
    """Write ``value`` at ``("next", *key)``, creating the nested groups with the batch sizes
    of their counterparts at the root (``("next", "agents")`` is ``[*B, N]`` like
    ``"agents"``), as the env's own ``"next"`` entries have them."""
    key = (key,) if isinstance(key, str) else tuple(key)
    if "next" not in tensordict.keys():
        tensordict.set("next", tensordict.empty())
    parent = tensordict.get("next")
    for i in range(1, len(key)):
        prefix = key[:i]
        if prefix[-1] not in parent.keys():
            root = tensordict.get(prefix, None)
            batch = root.batch_size if root is not None else parent.batch_size
            parent.set(prefix[-1], TensorDict({}, batch_size=batch, device=parent.device))
        parent = parent.get(prefix[-1])
    parent.set(key[-1], value)


class _GRUSequence(torch.autograd.Function):
    """A one-layer GRU over a whole time-major sequence with a hand-written backward.

    torch's CPU GRU records every step's gates for autograd, and its backward concatenates
    the three gate gradients of every step and accumulates the weight gradients one step at
    a time. Here the forward keeps the gates in ``[S, .]`` buffers; the backward walks the
    steps with a few small products each, writes the gate gradients straight into the input
    gradient (no concatenation of ``[T, M, 3H]`` tensors) and computes the weight and bias
    gradients as products over all ``S`` rows at the end. Written by hand because torch has
    no such kernel for the CPU (cuDNN's fused GRU is used on CUDA); tested against
    ``nn.GRU``.

    The sequence is packed as in torch's ``PackedSequence``: ``batch_sizes[t]`` rows at step
    ``t``, non-increasing, the active rows of a step a prefix of those of the step before
    (rows sorted by decreasing length), step after step in ``gi``, ``S = sum(batch_sizes)``
    rows in all. ``batch_sizes = None`` is the dense case, every step ``M`` rows
    (``gi [T, M, 3H]``). The states are kept in one ``[M + S, H]`` buffer whose first ``M``
    rows are ``h0``: in the dense case it is ``[T + 1, M, H]`` and the previous states of
    every step are a view of it, not a copy; a packed sequence computes only the steps its
    rows have (a batch of short episodes padded to its longest one: the padding costs
    nothing).

    Gates as in ``nn.GRU`` (order r, z, n): ``r, z = sigmoid(gi_rz + gh_rz)``,
    ``n = tanh(gi_n + r * gh_n)``, ``h' = n + z * (h - n)`` with ``gh = W_hh h + b_hh``.

    Shapes: ``gi`` ``[T, M, 3H]`` or packed ``[S, 3H]`` (the input projections
    ``W_ih x + b_ih`` of every step), ``h0`` ``[M, H]``, ``w_hh`` ``[3H, H]``, ``b_hh``
    ``[3H]``, ``batch_sizes`` a tuple of ``T`` ints or ``None`` -> states ``[T, M, H]`` or
    packed ``[S, H]``.
    """

    @staticmethod
    def forward(ctx, gi, h0, w_hh, b_hh, batch_sizes=None):
        rows, three_h = h0.shape[0], gi.shape[-1]
        hd = three_h // 3
        sizes = (rows,) * gi.shape[0] if batch_sizes is None else tuple(batch_sizes)
        flat = gi.reshape(-1, three_h)  # [S, 3H]
        total = flat.shape[0]
        hs = gi.new_empty(rows + total, hd)  # hs[:M] = h0, then the state after every step
        hs[:rows] = h0
        gh = gi.new_empty(total, three_h)  # W_hh h + b_hh of every step
        rz = gi.new_empty(total, 2 * hd)
        n = gi.new_empty(total, hd)
        w_t = w_hh.t()
        prev, at = 0, 0  # where the previous states start in hs; this step's first row
        for m in sizes:
            h = hs[prev : prev + m]
            end = at + m
            gh_t = torch.addmm(b_hh, h, w_t, out=gh[at:end])
            rz_t = torch.add(flat[at:end, : 2 * hd], gh_t[:, : 2 * hd], out=rz[at:end]).sigmoid_()
            n_t = torch.addcmul(
                flat[at:end, 2 * hd :], rz_t[:, :hd], gh_t[:, 2 * hd :], out=n[at:end]
            )
            n_t.tanh_()
            torch.addcmul(n_t, rz_t[:, hd:], h - n_t, out=hs[rows + at : rows + end])
            prev, at = rows + at, end
        ctx.save_for_backward(w_hh, hs, gh, rz, n)
        ctx.sizes, ctx.dense = sizes, batch_sizes is None
        out = hs[rows:]
        return out.view(gi.shape[0], rows, hd) if ctx.dense else out

    @staticmethod
    def backward(ctx, grad_out):
        w_hh, hs, gh, rz, n = ctx.saved_tensors
        sizes = ctx.sizes
        total, hd = n.shape
        rows = hs.shape[0] - total
        grad_out = grad_out.reshape(total, hd)
        if ctx.dense:
            h_prev = hs[:total]  # [S, H], a view
        else:  # the previous states of each step's rows: a prefix of the step before's
            starts, prev, at = [], 0, 0
            for m in sizes:
                starts.append(torch.arange(prev, prev + m))
                prev, at = rows + at, at + m
            h_prev = hs.index_select(0, torch.cat(starts).to(hs.device))
        z, r = rz[:, hd:], rz[:, :hd]
        # step-independent factors, for all steps at once
        d_n = (1 - z) * (1 - n * n)  # d h' / d (pre-activation of n), given d h'
        h_minus_n = h_prev - n
        d_rz = rz * (1 - rz)  # sigmoid'
        gh_n = gh[:, 2 * hd :]
        # the input side's gradient: [r and z pre-activations, n pre-activation]; the hidden
        # side shares the r, z part and has a_n * r for its n part (g_hn)
        grad_gi = grad_out.new_empty(total, 3 * hd)
        g_hn = grad_out.new_empty(total, hd)
        w_rz, w_n = w_hh[: 2 * hd], w_hh[2 * hd :]
        # dh: the gradient of the states of the rows active so far (walking back, the active
        # rows only grow); autograd always hands a tensor (zeros if unused)
        dh = grad_out.new_zeros(sizes[-1] if sizes else rows, hd)
        end = total
        for m in reversed(sizes):
            at = end - m
            if m > dh.shape[0]:  # rows whose last step this is join with a zero gradient
                dh = torch.cat([dh, dh.new_zeros(m - dh.shape[0], hd)])
            dh = dh + grad_out[at:end]
            g = grad_gi[at:end]
            a_n = torch.mul(dh, d_n[at:end], out=g[:, 2 * hd :])
            torch.mul(a_n, gh_n[at:end], out=g[:, :hd])
            torch.mul(dh, h_minus_n[at:end], out=g[:, hd : 2 * hd])
            g_rz = g[:, : 2 * hd].mul_(d_rz[at:end])
            g_n = torch.mul(a_n, r[at:end], out=g_hn[at:end])
            dh = torch.addmm(dh * z[at:end], g_rz, w_rz).addmm_(g_n, w_n)
            end = at
        if dh.shape[0] < rows:  # rows with no step at all
            dh = torch.cat([dh, dh.new_zeros(rows - dh.shape[0], hd)])
        flat_rz = grad_gi[:, : 2 * hd]  # a strided view
        grad_w = w_hh.new_empty(3 * hd, hd)
        torch.mm(flat_rz.t(), h_prev, out=grad_w[: 2 * hd])
        torch.mm(g_hn.t(), h_prev, out=grad_w[2 * hd :])
        grad_b = torch.cat([flat_rz.sum(0), g_hn.sum(0)])
        if ctx.dense:
            grad_gi = grad_gi.view(len(sizes), rows, 3 * hd)
        return grad_gi, dh, grad_w, grad_b, None


#: pack sequences (and mix only the real samples) only when at most this share of the
#: padded steps is real: packing costs a gather of the inputs and a scatter of the outputs
#: (and their gradients), which the skipped steps repay only when there are enough of them.
#: Measured on the predator-prey batch (32 episodes x 200 steps x 8 agents, one thread,
#: docs/speed.md): qmix, cw_qmix and resq updates 0.28-0.29x at 22% real steps, 0.76-0.90x
#: at 78%, no clear change at 94%
PACK_MAX_FILL = 0.8


def packing_pays(real: int, total: int) -> bool:
    """Whether computing only ``real`` of ``total`` padded steps (or samples) pays for the
    gather and scatter it takes (:data:`PACK_MAX_FILL`): the one rule of the packed unrolls
    and of the losses' mixers."""
    return real <= PACK_MAX_FILL * total


def _packing(
    lengths: torch.Tensor, steps: int, device: torch.device
) -> tuple[torch.Tensor, list[int], torch.Tensor] | None:
    """How to pack ``M`` time-major sequences ``[T, M, .]`` of ``lengths`` ``[M]`` steps
    (ints, clamped to ``1..T``) as torch's ``PackedSequence`` lays them out: ``order`` ``[M]``
    (the rows by decreasing length, ties in row order), ``batch_sizes`` (the active rows of
    each step, a prefix of ``order``) and ``index`` ``[S]`` (the packed rows' positions in
    the flattened ``[T * M]``); ``None`` (compute every step) when the real steps are more
    than :data:`PACK_MAX_FILL` of them.

    Written by hand rather than with ``pack_padded_sequence``/``pad_packed_sequence``, which
    sort and copy the whole padded ``[T, M, .]`` tensor and whose backward copies it once
    per distinct length (about a third of a CW-QMIX update on short episodes)."""
    lengths = lengths.to("cpu", torch.int64).clamp(1, steps)
    if not packing_pays(int(lengths.sum()), steps * lengths.numel()):
        return None
    order = torch.argsort(lengths, descending=True, stable=True)
    active = lengths[order].unsqueeze(0) > torch.arange(steps).unsqueeze(1)  # [T, M]
    rows = lengths.numel()
    index = (torch.arange(steps).unsqueeze(1) * rows + order.unsqueeze(0))[active]
    return order.to(device), active.sum(1).tolist(), index.to(device)


class AgentGRU(nn.Module):
    """pymarl's ``RNNAgent`` shared by every agent: ``Linear -> ReLU -> GRU -> Linear``.

    The recurrent layer is a one-layer ``nn.GRU`` (the same cell as pymarl's ``GRUCell``) so
    that a whole sequence runs in one call of torch's fused loop.

    Input per agent: ``[observation, one-hot last action (optional), one-hot agent id
    (optional)]``.

    Shapes (``step``): ``observation [*B, N, obs_dim]``, ``last_action [*B, N, A]``,
    ``hidden [*B, N, H]`` -> ``action_value [*B, N, A]``, ``hidden [*B, N, H]``.
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_agents: int,
        hidden_dim: int = 64,
        last_action: bool = True,
        agent_id: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_sizes(
            "AgentGRU",
            obs_dim=obs_dim,
            n_actions=n_actions,
            n_agents=n_agents,
            hidden_dim=hidden_dim,
        )
        self.obs_dim, self.n_actions, self.n_agents = obs_dim, n_actions, n_agents
        self.hidden_dim = hidden_dim
        self.use_last_action, self.use_agent_id = last_action, agent_id
        #: on the CPU, unroll with gradient through :class:`_GRUSequence` (faster backward)
        self.custom_backward = True
        in_dim = obs_dim + (n_actions if last_action else 0) + (n_agents if agent_id else 0)
        self.fc1 = nn.Linear(in_dim, hidden_dim, device=device)
        # time-major: torch's CPU GRU kernel loops over time on [T, M, H]; a batch-first input
        # costs a transposed copy of the sequence in and out (and of its gradients)
        self.rnn = nn.GRU(hidden_dim, hidden_dim, device=device)
        self.fc2 = nn.Linear(hidden_dim, n_actions, device=device)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Utilities ``[..., A]`` from GRU outputs ``[..., H]``."""
        return self.fc2(h)

    def inputs(self, observation: torch.Tensor, last_action: torch.Tensor | None) -> torch.Tensor:
        """``[*B, N, obs_dim]`` (+ ``[*B, N, A]``) -> network input ``[*B, N, in_dim]``."""
        x = observation.new_empty(
            *observation.shape[:-1], self.fc1.in_features, dtype=self.fc1.weight.dtype
        )
        self.write_inputs(x, observation, last_action)
        return x

    def write_inputs(
        self, x: torch.Tensor, observation: torch.Tensor, last_action: torch.Tensor | None
    ) -> None:
        """Write the network input of ``observation`` ``[..., N, obs_dim]`` (and
        ``last_action`` ``[..., N, A]``) into ``x`` ``[..., N, in_dim]`` (any layout of the
        leading dimensions, e.g. a time-major buffer): ``[observation, one-hot last action,
        one-hot agent id]``, the one definition of the input's layout."""
        if observation.shape[-2:] != (self.n_agents, self.obs_dim):
            raise ValueError(
                f"AgentGRU was built for {self.n_agents} agents with {self.obs_dim} observation "
                f"features, got observation of shape {tuple(observation.shape)}"
            )
        x[..., : self.obs_dim] = observation
        at = self.obs_dim
        if self.use_last_action:
            if last_action is None:
                raise KeyError("AgentGRU uses the last action but none was given")
            if last_action.shape[-2:] != (self.n_agents, self.n_actions):
                raise ValueError(
                    f"AgentGRU: the last action must be one-hot [*B, {self.n_agents}, "
                    f"{self.n_actions}] (as LastActionWriter writes it), got shape "
                    f"{tuple(last_action.shape)}"
                )
            x[..., at : at + self.n_actions] = last_action
            at += self.n_actions
        if self.use_agent_id:
            x[..., at:] = torch.eye(self.n_agents, device=x.device, dtype=x.dtype)

    def step(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step on prepared inputs ``[*B, N, in_dim]`` and states ``[*B, N, H]``."""
        q, h = self.unroll(x.unsqueeze(-3), hidden, time_dim=x.dim() - 2)
        return q.squeeze(-3), h.squeeze(-3)

    def trunk(self, x: torch.Tensor, hidden: torch.Tensor, time_dim: int) -> torch.Tensor:
        """``x [*B, T, N, in_dim]`` (time at ``time_dim``) from states ``[*B, N, H]`` -> the
        state after every step ``[*B, T, N, H]``."""
        h = self.trunk_time_major(x.movedim(time_dim, 0), hidden)  # one copy of the inputs
        # contiguous in the caller's layout: heads that broadcast over it (IQN) would otherwise
        # work on, and then copy, a transposed [*B, T, N, K, H] product
        return h.movedim(0, time_dim).contiguous()

    def trunk_time_major(
        self, xt: torch.Tensor, hidden: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`trunk` on time-major inputs ``[T, *B, N, in_dim]`` -> ``[T, *B, N, H]``.

        ``lengths`` ``[*B, N]`` (ints in ``1..T``): only the first ``lengths`` steps of each
        sequence are computed, as a packed sequence (:func:`_packing`); the states after them
        are 0. A batch of episodes padded to its longest then costs what its real steps
        cost. ``None``: every step of every sequence."""
        steps, batch = xt.shape[0], xt.shape[1:-1]
        x = xt.reshape(steps, -1, xt.shape[-1])  # [T, M, in]
        h0 = hidden.reshape(-1, self.hidden_dim).to(self.fc1.weight.dtype)
        packing = None if lengths is None else _packing(lengths.reshape(-1), steps, x.device)
        if packing is None:
            data = x
        else:
            order, sizes, index = packing
            data = x.reshape(-1, x.shape[-1]).index_select(0, index)  # [S, in]
            h0 = h0.index_select(0, order)  # the rows in the packed order
        z = torch.relu(self.fc1(data))  # [T, M, H] or packed [S, H]
        rnn = self.rnn
        if self.custom_backward and z.device.type == "cpu" and torch.is_grad_enabled():
            gi = nn.functional.linear(z, rnn.weight_ih_l0, rnn.bias_ih_l0)  # [.., 3H]
            out = _GRUSequence.apply(
                gi, h0.contiguous(), rnn.weight_hh_l0, rnn.bias_hh_l0, packing and packing[1]
            )
        elif packing is None:
            out, _ = rnn(z, h0.unsqueeze(0).contiguous())
        else:  # torch's GRU on the packed sequence (h0 already in its order: no sorting)
            seq = PackedSequence(z, torch.tensor(packing[1], dtype=torch.int64))
            out = rnn(seq, h0.unsqueeze(0).contiguous())[0].data
        if packing is not None:  # back to [T, M, H], zeros where nothing was computed
            full = out.new_zeros(steps * x.shape[1], out.shape[-1])
            out = full.index_copy_(0, packing[2], out)
        return out.reshape(steps, *batch, self.hidden_dim)

    def unroll(
        self, x: torch.Tensor, hidden: torch.Tensor, time_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`trunk` and :meth:`head`: utilities ``[*B, T, N, A]`` and states
        ``[*B, T, N, H]``."""
        h = self.trunk(x, hidden, time_dim)
        return self.head(h), h


class MultiAgentGRU(TensorDictModuleBase):
    """:class:`AgentGRU` as a TensorDict module usable step by step and unrolled over time.

    Keys (defaults): reads ``("agents", "observation")``, ``("agents", "last_action")``
    (one-hot ``[*B, N, A]``, zeros at an episode start), ``("agents", "rnn_hidden")``
    ``[*B, N, H]`` and ``"is_init"`` ``[*B, 1]``; writes ``("agents", "action_value")``
    ``[*B, N, A]`` and ``("next", "agents", "rnn_hidden")``; with ``features_key`` also the
    state after the step ``[*B, N, H]`` there (the per-agent features QTRAN reads: the GRU
    output the utilities are computed from).

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> gru = MultiAgentGRU(obs_dim=4, n_actions=3, n_agents=2)
        >>> td = TensorDict({("agents", "observation"): torch.randn(5, 7, 2, 4),
        ...                  ("agents", "last_action"): torch.zeros(5, 7, 2, 3),
        ...                  "is_init": torch.zeros(5, 7, 1, dtype=torch.bool)}, [5, 7])
        >>> with set_recurrent_mode(True):
        ...     gru(td)["agents", "action_value"].shape
        torch.Size([5, 7, 2, 3])
    """

    def __init__(
        self,
        obs_dim: int,
        n_actions: int,
        n_agents: int,
        hidden_dim: int = 64,
        last_action: bool = True,
        agent_id: bool = True,
        device: torch.device | str | None = None,
        *,
        observation_key: NestedKey = ("agents", "observation"),
        last_action_key: NestedKey = ("agents", "last_action"),
        hidden_key: NestedKey = ("agents", "rnn_hidden"),
        is_init_key: NestedKey = "is_init",
        out_key: NestedKey = ("agents", "action_value"),
        features_key: NestedKey | None = None,
    ) -> None:
        super().__init__()
        self.net = AgentGRU(obs_dim, n_actions, n_agents, hidden_dim, last_action, agent_id, device)
        self.observation_key = unravel_key(observation_key)
        self.last_action_key = unravel_key(last_action_key) if last_action else None
        self.hidden_key = unravel_key(hidden_key)
        self.is_init_key = unravel_key(is_init_key)
        self.out_key = unravel_key(out_key)
        self.in_keys = [
            k
            for k in (self.observation_key, self.last_action_key, self.hidden_key, self.is_init_key)
            if k is not None
        ]
        self.features_key = None if features_key is None else unravel_key(features_key)
        self.feature_dim = hidden_dim
        self.out_keys = [self.out_key, unravel_key(("next", self.hidden_key))]
        if self.features_key is not None:
            self.out_keys.append(self.features_key)
        #: absent state starts at zero; absent is_init means "not an episode start"
        self.optional_in_keys = [self.hidden_key, self.is_init_key]

    def _head(self, h: torch.Tensor, tensordict: TensorDictBase) -> torch.Tensor:
        """What the network writes at ``out_key`` from the GRU outputs ``h``."""
        return self.net.head(h)

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """Env transform creating zero ``rnn_hidden`` (and ``last_action``) at reset."""
        n, h, a = self.net.n_agents, self.net.hidden_dim, self.net.n_actions
        specs = {self.hidden_key: Unbounded(shape=(n, h))}
        if self.last_action_key is not None:
            specs[self.last_action_key] = Unbounded(shape=(n, a))
        return TensorDictPrimer(Composite(specs), expand_specs=True)

    def _zero_state(self, observation: torch.Tensor) -> torch.Tensor:
        return observation.new_zeros(*observation.shape[:-1], self.net.hidden_dim)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key)
        last = None if self.last_action_key is None else tensordict.get(self.last_action_key)
        x = self.net.inputs(obs, last)  # [*B, (T,) N, in]
        hidden = tensordict.get(self.hidden_key, None)
        is_init = tensordict.get(self.is_init_key, None)
        if recurrent_mode():
            if tensordict.ndim < 1:
                raise ValueError("recurrent mode needs a time dimension: batch [*B, T]")
            t_dim = tensordict.ndim - 1
            h = (
                self._zero_state(obs.select(t_dim, 0))
                if hidden is None
                else hidden.select(t_dim, 0)
            )
            # one fused unroll per segment between the times where some sequence restarts
            # (is_init); whole-episode batches restart only at t=0: a single call
            starts = [0]
            if is_init is not None:
                init = is_init.reshape(*is_init.shape[: t_dim + 1])  # [*B, T]
                h = h.masked_fill(init.select(t_dim, 0).reshape(*h.shape[:-2], 1, 1), 0.0)
                restart = init.flatten(0, t_dim - 1).any(0) if t_dim > 0 else init
                starts += [t for t in restart.nonzero().flatten().tolist() if t > 0]
            bounds = starts + [x.shape[t_dim]]
            hs = []
            for a, b in zip(bounds[:-1], bounds[1:], strict=True):
                if a > 0:  # zero the state of the sequences that restart here
                    reset = is_init.select(t_dim, a).reshape(*h.shape[:-2], 1, 1)
                    h = h.masked_fill(reset, 0.0)
                hseq = self.net.trunk(x.narrow(t_dim, a, b - a), h, t_dim)
                hs.append(hseq)
                h = hseq.select(t_dim, b - a - 1)
            h = torch.cat(hs, t_dim)
        else:
            h = self._zero_state(obs) if hidden is None else hidden
            if is_init is not None:
                h = h.masked_fill(is_init.reshape(*h.shape[:-2], 1, 1), 0.0)
            t_dim = x.dim() - 2
            h = self.net.trunk(x.unsqueeze(t_dim), h, t_dim).squeeze(t_dim)
        return self._write(tensordict, h)

    def _write(
        self, tensordict: TensorDictBase, h: torch.Tensor, q: torch.Tensor | None = None
    ) -> TensorDictBase:
        """Write the outputs of GRU states ``h`` ``[*B, (T,) N, H]`` into ``tensordict``:
        the utilities (``q`` when already computed, else the head's), the features and the
        state carried to the next step."""
        tensordict.set(self.out_key, self._head(h, tensordict) if q is None else q)
        if self.features_key is not None:
            tensordict.set(self.features_key, h)
        set_next(tensordict, self.hidden_key, h)
        return tensordict

    def _whole_episodes(
        self, tensordict: TensorDictBase, valid: torch.Tensor | None, pack: bool
    ) -> tuple[_Extended, torch.Tensor, torch.Tensor | None] | None:
        """What :meth:`forward_with_next` and :meth:`forward_current` share: the inputs
        ``[x_0, next_x_0, ..., next_x_{T-1}]`` (``_extended_inputs``), the initial states
        ``[*B, N, H]`` and, with ``pack``, the real steps of every sequence, ``lengths``
        ``[*B, N]`` (``None`` without ``pack`` or ``valid``, or when the real steps of some row
        are not a prefix of it); ``None`` when a real step does not continue the previous
        one."""
        if tensordict.ndim < 1:
            return None
        nxt = tensordict.get("next", None)
        if nxt is None:
            return None
        t_dim = tensordict.ndim - 1
        steps = tensordict.shape[t_dim]
        keys = [self.observation_key] + ([self.last_action_key] if self.last_action_key else [])
        cur = [tensordict.get(k) for k in keys]
        nex = [nxt.get(k, None) for k in keys]
        if any(x is None for x in nex):
            return None
        is_init = tensordict.get(self.is_init_key, None)
        next_init = nxt.get(self.is_init_key, None)
        shared = _extended_inputs(self.net, cur, nex, is_init, t_dim)
        ok = shared.continues
        if valid is not None:
            ok = ok | ~valid.reshape(tensordict.shape).bool().narrow(t_dim, 1, steps - 1)
        if next_init is not None:
            real = True if valid is None else valid.reshape(tensordict.shape).bool()
            if (next_init.reshape(tensordict.shape) & real).any():
                return None
        if not bool(ok.all()):
            return None

        hidden = tensordict.get(self.hidden_key, None)
        obs0 = cur[0].select(t_dim, 0)
        h = self._zero_state(obs0) if hidden is None else hidden.select(t_dim, 0)
        if is_init is not None:
            init0 = is_init.reshape(tensordict.shape).select(t_dim, 0)
            h = h.masked_fill(init0.reshape(*h.shape[:-2], 1, 1), 0.0)
        lengths = None
        if valid is not None and pack:
            real = valid.reshape(tensordict.shape) > 0  # a float mask: weights of real steps
            length = real.sum(t_dim)  # [*B]
            prefix = torch.arange(steps, device=real.device) < length.unsqueeze(-1)
            if bool((prefix == real).all()):  # one sync per batch, shared by the networks
                lengths = length.unsqueeze(-1).expand(h.shape[:-1])
        return shared, h, lengths

    def _unroll_whole(
        self, tensordict: TensorDictBase, valid: torch.Tensor | None, pack: bool, extra: int
    ) -> tuple[torch.Tensor, int, int] | None:
        """The states ``[T + extra, *B, N, H]`` (time-major) of the unroll over the shared
        inputs' first ``T + extra`` steps (``extra`` 0: the current steps; 1: also the next
        step), each episode's ``L`` real steps and ``extra`` more when packed; with the time
        dimension and ``T``. ``None`` as :meth:`_whole_episodes`."""
        prepared = self._whole_episodes(tensordict, valid, pack)
        if prepared is None:
            return None
        shared, h, lengths = prepared
        t_dim = tensordict.ndim - 1
        steps = tensordict.shape[t_dim]
        if lengths is not None:
            lengths = (lengths + extra).clamp(1, steps + extra)
        return self.net.trunk_time_major(shared.x[: steps + extra], h, lengths), t_dim, steps

    def forward_current(
        self, tensordict: TensorDictBase, valid: torch.Tensor | None = None, pack: bool = True
    ) -> TensorDictBase | None:
        """Recurrent-mode :meth:`forward` on ``[*B, T]`` whole episodes from the inputs
        :meth:`forward_with_next` builds (shared by a loss's networks), computing only the
        real steps of each episode: its outputs at the real steps equal :meth:`forward`'s
        (tested), the padded steps' states are 0. Arguments as :meth:`forward_with_next`;
        ``None`` when a real step does not continue the previous one (the caller then takes
        :meth:`forward`)."""
        unrolled = self._unroll_whole(tensordict, valid, pack, extra=0)
        if unrolled is None:
            return None
        h_tm, t_dim, _ = unrolled  # [T, *B, N, H]
        if type(self)._head is MultiAgentGRU._head and self.features_key is None:
            q = self.net.head(h_tm).movedim(0, t_dim)  # the plain head runs time-major
            return self._write(tensordict, h_tm.movedim(0, t_dim), q)
        # contiguous in the caller's layout (see forward_with_next)
        return self._write(tensordict, h_tm.movedim(0, t_dim).contiguous())

    def forward_with_next(
        self, tensordict: TensorDictBase, valid: torch.Tensor | None = None, pack: bool = True
    ) -> tuple[TensorDictBase, TensorDictBase] | None:
        """Recurrent-mode :meth:`forward` on ``[*B, T]`` data and the step on
        ``tensordict["next"]`` from ONE unroll over ``T + 1`` inputs.

        The plain way (what the losses did before, and still do when this returns ``None``)
        is an unroll over the ``T`` steps followed by one step on every ``"next"`` entry from
        the state after that step: ``T`` more GRU steps' worth of work. When every real step
        ``t >= 1`` continues the previous one (its inputs are the ``"next"`` inputs of
        ``t - 1`` and it is no episode start, which holds for the whole episodes of
        :class:`~resq_torchrl.data.EpisodeReplayBuffer`), the unroll over
        ``[x_0, next_x_0, ..., next_x_{T-1}]`` gives both: steps ``0..T-1`` are the current
        values and steps ``1..T`` the next ones, equal to the plain way's (tested).

        Args:
            tensordict: ``[*B, T]`` input of the recurrent mode, with a ``"next"`` entry.
            valid: ``[*B, T]`` bool, the real (non-padded) steps; ``None``: all are real.
                Padded steps may hold anything: their outputs are not the plain way's.
            pack: compute only the real steps (and the step after the last), as packed
                sequences, when ``valid`` marks a prefix of every row (whole episodes); the
                states of the other steps are then 0. ``False``: every step.

        Returns:
            ``(out, out_next)`` like ``forward`` and the step on ``"next"`` (shallow copies
            holding the outputs; ``out_next``'s outputs carry no gradient), or ``None`` when
            the data has no time dimension or a real step does not continue the previous one
            (the caller then takes the plain way).
        """
        # the next values of an episode's last real step count (a truncated episode
        # bootstraps from them): T + 1 inputs, an episode of L real steps needs L + 1
        unrolled = self._unroll_whole(tensordict, valid, pack, extra=1)
        if unrolled is None:
            return None
        h_tm, t_dim, steps = unrolled  # [T+1, *B, N, H]
        nxt = tensordict.get("next")
        out, out_next = tensordict, nxt.copy()  # the head reads its own inputs (IQN: fractions)
        if type(self)._head is MultiAgentGRU._head and self.features_key is None:
            # the plain head runs time-major too: only the [.., A] utilities change layout
            q = self.net.head(h_tm).movedim(0, t_dim)  # [*B, T+1, N, A], a view
            h = h_tm.movedim(0, t_dim)
            out.set(self.out_key, q.narrow(t_dim, 0, steps))
            set_next(out, self.hidden_key, h.narrow(t_dim, 0, steps))
            # a copy: an in-place edit of one must not change the other (nor its gradient)
            out_next.set(self.out_key, q.narrow(t_dim, 1, steps).detach().clone())
            return out, out_next
        # contiguous in the caller's layout: heads that broadcast over it (IQN) would otherwise
        # work on, and then copy, a transposed [*B, T, N, K, H] product
        h = h_tm.movedim(0, t_dim).contiguous()
        h_cur = h.narrow(t_dim, 0, steps)
        out.set(self.out_key, self._head(h_cur, out))
        if self.features_key is not None:
            out.set(self.features_key, h_cur)
        set_next(out, self.hidden_key, h_cur)
        h_next = h.narrow(t_dim, 1, steps).detach()
        with torch.no_grad():
            out_next.set(self.out_key, self._head(h_next, out_next))
        if self.features_key is not None:
            out_next.set(self.features_key, h_next)
        return out, out_next


class _Extended:
    """The inputs of :meth:`MultiAgentGRU.forward_with_next`, built once per batch:
    ``x`` ``[T + 1, *B, N, in]`` time-major (``x_0`` then the ``"next"`` inputs of every
    step) and ``continues`` ``[*B, T - 1]`` (step ``t + 1`` holds the ``"next"`` inputs of
    step ``t`` and is no episode start)."""

    __slots__ = ("key", "sources", "x", "continues")


#: the last :class:`_Extended` built: a loss runs several networks of one architecture
#: (ResQ: main, residual, central, target central) on the same batch, and they share it;
#: the losses clear it at the end of their forward (:func:`clear_shared_inputs`), so it
#: never keeps a batch alive between updates
_LAST_EXTENDED: list[_Extended] = []


def clear_shared_inputs() -> None:
    """Forget the inputs shared by the networks of one loss call (see ``_extended_inputs``)."""
    _LAST_EXTENDED.clear()


def _extended_inputs(net, cur, nex, is_init, t_dim: int) -> _Extended:
    """The time-major inputs of ``net`` over ``[x_0, next_x_0, ..., next_x_{T-1}]``, written
    in place into one buffer (no concatenation), and the continuity check, reused while the
    source tensors are the same objects, unmodified, and carry no gradient."""
    sources = [*cur, *nex] + ([] if is_init is None else [is_init])
    # reused only for tensors whose in-place changes are counted: not for inference tensors
    # (no version counter) nor for tensors with a graph (the buffer would carry it along)
    cacheable = not any(t.requires_grad or t.is_inference() for t in sources)
    key = (
        tuple((id(x), x._version, x.shape, x.device) for x in sources) if cacheable else None,
        t_dim,
        net.obs_dim,
        net.n_actions,
        net.n_agents,
        net.use_last_action,
        net.use_agent_id,
        net.fc1.weight.dtype,
    )
    if cacheable and _LAST_EXTENDED and _LAST_EXTENDED[0].key == key:
        return _LAST_EXTENDED[0]
    steps = cur[0].shape[t_dim]
    continues = torch.ones(
        cur[0].shape[:t_dim] + (steps - 1,), dtype=torch.bool, device=cur[0].device
    )
    for x, y in zip(cur, nex, strict=True):
        same = x.narrow(t_dim, 1, steps - 1) == y.narrow(t_dim, 0, steps - 1)
        continues &= same.flatten(t_dim + 1).all(-1)
    if is_init is not None:
        continues &= ~is_init.reshape(cur[0].shape[: t_dim + 1]).narrow(t_dim, 1, steps - 1)
    obs = cur[0]
    x = obs.new_empty(
        steps + 1,
        *obs.shape[:t_dim],
        *obs.shape[t_dim + 1 : -1],
        net.fc1.in_features,
        dtype=net.fc1.weight.dtype,
    )  # [T + 1, *B, N, in]
    last, next_last = (cur[1], nex[1]) if len(cur) > 1 else (None, None)
    net.write_inputs(x[0], obs.select(t_dim, 0), None if last is None else last.select(t_dim, 0))
    net.write_inputs(
        x[1:], nex[0].movedim(t_dim, 0), None if next_last is None else next_last.movedim(t_dim, 0)
    )
    entry = _Extended()
    entry.key, entry.x, entry.continues = key, x, continues
    entry.sources = sources  # held, so that the ids in the key stay theirs
    if cacheable:
        _LAST_EXTENDED[:] = [entry]
    return entry


class LastActionWriter(TensorDictModuleBase):
    """Policy step that writes the one-hot chosen action ``[*B, N, A]`` at
    ``("next", *out_key)``: after ``step_mdp`` it is the last action the recurrent agents
    read at the next step (the env's ``TensorDictPrimer`` zeroes it at reset)."""

    def __init__(
        self,
        n_actions: int,
        action_key: NestedKey = ("agents", "action"),
        out_key: NestedKey = ("agents", "last_action"),
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        self.action_key, self.out_key = unravel_key(action_key), unravel_key(out_key)
        self.in_keys = [self.action_key]
        self.out_keys = [unravel_key(("next", self.out_key))]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(self.action_key)
        one_hot = torch.nn.functional.one_hot(action.long(), self.n_actions).float()
        set_next(tensordict, self.out_key, one_hot)
        return tensordict
