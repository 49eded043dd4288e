"""Reading a traced graph's intermediate values: the outputs of chosen nodes, as alignment
observes a group's units at its sites."""

from __future__ import annotations

import operator

import torch.fx as fx

__all__ = ["extract_outputs", "has_inplace_ops"]

_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def has_inplace_ops(gm: fx.GraphModule) -> bool:
    """Whether some node of ``gm`` may overwrite its input in place (``ReLU(inplace=True)``,
    ``x.add_(y)``, ``F.relu(x, inplace=True)``)."""
    for n in gm.graph.nodes:
        if n.op == "call_module" and getattr(gm.get_submodule(n.target), "inplace", False):
            return True
        if n.op == "call_method" and n.target.endswith("_") and not n.target.startswith("__"):
            return True
        if n.op == "call_function" and (
            n.target in _INPLACE_FUNCTIONS
            or n.kwargs.get("inplace")
            or getattr(n.target, "__name__", "").endswith("_")
        ):
            return True
    return False


def extract_outputs(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A graph that returns the outputs of the nodes ``names``, in that order, and stops after
    the last of them. If the graph has in-place ops (a ReLU(inplace=True) after a BatchNorm),
    the outputs are copies taken right away, so that later in-place ops cannot change what was
    observed."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.graph_copy(gm.graph, env)
    by_name = {n.name: n for n in gm.graph.nodes}
    copy_sites = has_inplace_ops(gm)
    outs = []
    for name in names:
        node = env[by_name[name]]
        if copy_sites:
            with graph.inserting_after(node):
                node = graph.call_method("clone", (node,))
        outs.append(node)
    graph.output(tuple(outs))
    extractor = fx.GraphModule(gm, graph)
    extractor.graph.eliminate_dead_code()
    extractor.recompile()
    return extractor
