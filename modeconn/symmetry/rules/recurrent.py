"""Rules for recurrent layers: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` and their cells.

The hidden units of a layer (and direction) may be permuted when the same permutation is
applied inside each gate block of ``weight_ih``/``weight_hh``/biases (4 blocks for an LSTM,
3 for a GRU, 1 for an RNN), to both axes of the recurrent ``weight_hh``, and to whatever reads
the hidden state: the next layer's ``weight_ih``, or the layer after the module. Gates act
unit by unit, so every gate sees its own unit. With ``proj_size`` an LSTM's recurrent state is
the projection ``weight_hr`` of the cell units: two spaces per layer. Time steps keep their
order. A zero initial state (``None``, ``zeros_like``, ``new_zeros``) couples nothing.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from modeconn.symmetry.context import RuleContext
from modeconn.symmetry.spaces import Layout, TensorLayout

__all__ = ["recurrent", "recurrent_cell"]

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


def _gates(module: nn.Module) -> int:
    return next(n for cls, n in _GATES.items() if isinstance(module, cls))


def _is_getitem(node: fx.Node) -> bool:
    return node.op == "call_function" and getattr(node.target, "__name__", "") == "getitem"


def _read(node: fx.Node) -> bool:
    """Whether a value is read by anything but unpacking that is itself never read."""
    return any(not _is_getitem(u) or _read(u) for u in node.users)


def _used(node: fx.Node, index: int) -> bool:
    """Whether element ``index`` of the node's tuple output is read anywhere."""
    return any(not _is_getitem(u) or (u.args[1] == index and _read(u)) for u in node.users)


def _state(ctx: RuleContext, raw) -> TensorLayout | None:
    """The layout of an initial state, ``None`` when there is none or it is uniform (zeros)."""
    a = ctx.ann(raw)
    return a if isinstance(a, TensorLayout) and not a.uniform else None


def recurrent(ctx: RuleContext) -> tuple:
    """nn.LSTM / nn.GRU / nn.RNN, any number of layers, bidirectional or not, batch_first or
    not, batched or not, with or without ``proj_size``."""
    m = ctx.module
    g = _gates(m)
    x = ctx.tensor("input")
    batched = x.ndim == 3
    t_ax = 1 if batched and m.batch_first else 0
    b_ax = (0 if m.batch_first else 1) if batched else None
    ctx.fix(x[t_ax], "the recurrence runs over time steps in order")
    dirs = 2 if m.bidirectional else 1
    proj = getattr(m, "proj_size", 0)
    feed: Layout | None = x[-1]
    hidden: list[Layout] = []  # per (layer, direction): cell units
    recur: list[Layout] = []  # per (layer, direction): the recurrent state (projection or cell units)
    for layer in range(m.num_layers):
        outs: list = []
        for d in range(dirs):
            sfx = f"_l{layer}{'_reverse' if d else ''}"
            h = ctx.new_units(m.hidden_size, f"{ctx.module_name}.h{sfx}")
            r = ctx.new_units(proj, f"{ctx.module_name}.p{sfx}") if proj else h
            gated = tuple(h * g)  # the same permutation inside every gate block
            ctx.bind_local(f"weight_ih{sfx}", 0, gated)
            ctx.bind_local(f"weight_ih{sfx}", 1, feed)
            ctx.bind_local(f"weight_hh{sfx}", 0, gated)
            ctx.bind_local(f"weight_hh{sfx}", 1, r)
            ctx.bind_local(f"bias_ih{sfx}", 0, gated)
            ctx.bind_local(f"bias_hh{sfx}", 0, gated)
            if proj:
                ctx.bind_local(f"weight_hr{sfx}", 0, r)
                ctx.bind_local(f"weight_hr{sfx}", 1, h)
            hidden.append(h)
            recur.append(r)
            outs.extend(ctx.resolve(r))
        feed = tuple(outs)
    hx = ctx.args["hx"]
    h0, c0 = (
        (_state(ctx, hx[0]), _state(ctx, hx[1])) if isinstance(hx, (tuple, list)) else (_state(ctx, hx), None)
    )
    needs_states = h0 is not None or c0 is not None or _used(ctx.node, 1)
    if needs_states and len(hidden) > 1:
        # h_n stacks every layer's state on one axis: one permutation must serve them all
        shared_r = ctx.merge_all(recur, "the final states of all layers share one axis")
        shared_h = ctx.merge_all(hidden, "the final states of all layers share one axis")
    else:
        shared_r, shared_h = recur[0], hidden[0]
    lb = None if b_ax is None else x[b_ax]
    for state, lay in ((h0, shared_r), (c0, shared_h)):
        if state is not None:
            ctx.merge(state[-1], lay, "initial state")
            if b_ax is not None:
                lb = ctx.merge(lb, state[1], "initial state batch axis")
            ctx.fix(state[0], "states are stacked by layer and direction")
    out_val, states = ctx.out_value
    layouts = [None] * x.ndim
    layouts[-1] = feed
    if b_ax is not None:
        layouts[b_ax] = lb
    output = TensorLayout(out_val, layouts)
    ctx.site("post", output)

    def state_layout(shape, lay):
        return TensorLayout(shape, [None] + ([lb] if batched else []) + [lay])

    if isinstance(states, torch.Size):
        return (output, state_layout(states, shared_r))
    return (output, (state_layout(states[0], shared_r), state_layout(states[1], shared_h)))


def recurrent_cell(ctx: RuleContext):
    """nn.LSTMCell / nn.GRUCell / nn.RNNCell: one step; the state in and out share the units."""
    m = ctx.module
    g = _gates(m)
    x = ctx.tensor("input")
    h = ctx.new_units(m.hidden_size)
    gated = tuple(h * g)
    ctx.bind_local("weight_ih", 0, gated)
    ctx.bind_local("weight_ih", 1, x[-1])
    ctx.bind_local("weight_hh", 0, gated)
    ctx.bind_local("weight_hh", 1, h)
    ctx.bind_local("bias_ih", 0, gated)
    ctx.bind_local("bias_hh", 0, gated)
    hx = ctx.args["hx"]
    states = [_state(ctx, s) for s in (hx if isinstance(hx, (tuple, list)) else (hx,))]
    lb = x[0] if x.ndim == 2 else None
    for s in states:
        if s is not None:
            ctx.merge(s[-1], h, "state")
            if x.ndim == 2:
                lb = ctx.merge(lb, s[0], "state batch axis")
    out = ctx.out_value
    shapes = (out,) if isinstance(out, torch.Size) else tuple(out)
    res = tuple(TensorLayout(s, ([lb] if x.ndim == 2 else []) + [h]) for s in shapes)
    for r in res:
        ctx.site("post", r)
    return res[0] if isinstance(out, torch.Size) else res
