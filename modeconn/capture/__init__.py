"""Capture: a model turned into a graph, and graphs run.

What a model is called with (:class:`ModelInputs`), its graph by torch.fx symbolic tracing or
torch.export (:func:`capture`, a :class:`Capture` that is reused on the same model and on
models of the same architecture), the structure of every value a graph computes
(:func:`record_values`), and two models' graphs run in lockstep (:func:`observe_pairs`).
Discovery and alignment both capture through here; nothing here knows permutations.
"""

from modeconn.capture.export import export_graph
from modeconn.capture.fx import LAYER, graph_name, kept_whole, trace
from modeconn.capture.graph import CAPTURES, Capture, Leaves, capture, captures_made, structure_of
from modeconn.capture.inputs import ModelInputs, model_inputs
from modeconn.capture.lockstep import observe_pairs
from modeconn.capture.names import node_place, op_name, target_name
from modeconn.capture.values import FieldTuple, record_values

__all__ = [
    "CAPTURES",
    "Capture",
    "Leaves",
    "capture",
    "captures_made",
    "structure_of",
    "ModelInputs",
    "model_inputs",
    "trace",
    "export_graph",
    "graph_name",
    "kept_whole",
    "LAYER",
    "record_values",
    "FieldTuple",
    "observe_pairs",
    "node_place",
    "op_name",
    "target_name",
]
