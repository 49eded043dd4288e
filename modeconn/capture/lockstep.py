"""Reading two traced graphs' intermediate values side by side: alignment observes a group's
units at the same nodes of model A and model B."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.fx as fx
import torch.nn as nn

__all__ = ["observe_pairs"]


def observe_pairs(
    gm_a: fx.GraphModule,
    gm_b: fx.GraphModule,
    names: Sequence[str],
    observe: Callable[[int, object, object], None],
    enter: Callable[[int], None] | None = None,
) -> fx.GraphModule:
    """One graph that runs ``gm_a`` and ``gm_b`` in lockstep — called with A's flattened inputs
    followed by B's — and calls ``observe(i, value_a, value_b)`` as soon as both graphs have
    computed node ``names[i]``, before either runs a node after it. So in-place ops later in
    the graph cannot change what is observed (no copies are needed), and every value is freed
    as soon as neither graph nor ``observe`` needs it, instead of all observed values living
    until the end of the pass. The graph stops after the last observed node and returns
    nothing useful. ``enter(k)`` is called before each stretch of model k's nodes (0 for A,
    1 for B), so that an error can be told to come from one model or the other."""
    graph = fx.Graph()
    root = nn.Module()
    root.add_module("a", gm_a)
    root.add_module("b", gm_b)
    # placeholders first: an exported graph may read parameters (get_attr) before its inputs
    nodes = [
        [n for n in gm.graph.nodes if n.op == "placeholder"]
        + [n for n in gm.graph.nodes if n.op not in ("placeholder", "output")]
        for gm in (gm_a, gm_b)
    ]
    position = [{n.name: i for i, n in enumerate(ns)} for ns in nodes]
    envs: tuple[dict, dict] = ({}, {})
    done = [0, 0]
    calls = []

    def copy(k: int, stop: int, kinds: tuple[str, ...] | None = None) -> None:
        prefix = "ab"[k]
        while done[k] < stop and (kinds is None or nodes[k][done[k]].op in kinds):
            node = nodes[k][done[k]]
            done[k] += 1
            new = graph.node_copy(node, lambda n: envs[k][n])
            if node.op in ("call_module", "get_attr"):
                new.target = f"{prefix}.{node.target}"
            elif node.op == "placeholder":  # the generated function's parameter names
                new.target = new.name
            envs[k][node] = new

    for k in (0, 1):  # A's inputs, then B's
        copy(k, len(nodes[k]), ("placeholder",))
    order = sorted(range(len(names)), key=lambda i: position[0][names[i]])
    for i in order:
        for k in (0, 1):
            stop = position[k][names[i]] + 1
            if done[k] < stop:
                if enter is not None:
                    calls.append(graph.call_function(enter, (k,)))
                copy(k, stop)
        a, b = (envs[k][nodes[k][position[k][names[i]]]] for k in (0, 1))
        calls.append(graph.call_function(observe, (i, a, b)))
    graph.output(tuple(calls))  # keeps the calls through dead-code elimination
    paired = fx.GraphModule(root, graph)
    paired.graph.eliminate_dead_code()
    paired.recompile()
    return paired
