"""The plugin contract: every hook modeconn calls, documented for plugin authors.

A plugin is a module (or object) with functions decorated by :data:`modeconn.hookimpl` and named
like the hooks below. Publish it in your distribution's ``pyproject.toml``::

    [project.entry-points.modeconn]
    my_costs = "modeconn_mycosts.plugin"

modeconn's own plugins are registered the same way. Each hook receives a registry to add to;
adding a name that another plugin already added fails at once and names both plugins.
Set ``MODECONN_DISABLE_PLUGIN_AUTOLOAD=1`` to load only modeconn's built-in plugins, and
``MODECONN_BLOCK_PLUGINS=name1,name2`` to skip entry points by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from modeconn.plugin_manager import PluginRegistry

hookspec = pluggy.HookspecMarker("modeconn")


@hookspec
def modeconn_register_costs(registry: PluginRegistry) -> None:
    """Add alignment cost functions: ``registry.add(name, cost)``.

    A cost tells ``modeconn.align`` how to match the units of model A and model B within each
    permutation group. Register an instance of a subclass of
    :class:`modeconn.alignment.ActivationCost` (implement ``matrix(stats)`` for one observation
    site; modeconn streams the data, averages your matrices over a group's sites and solves the
    assignment) or of :class:`modeconn.alignment.WeightCost` (implement
    ``solve(spec, state_a, state_b)`` and return the permutations). ``"correlation"``,
    ``"l2_preact"`` and ``"weight_matching"`` are built in. ``name`` is what users pass as
    ``align(..., cost=name)``. Called once, when the plugin manager is built. Returns nothing.
    """


@hookspec
def modeconn_register_curves(registry: PluginRegistry) -> None:
    """Add curve families: ``registry.add(name, family)``.

    A family maps the end points and the learnable bends to the weights at ``t`` in [0, 1]
    (``"bezier"``, ``"polychain"``, ``"linear"`` are built in). ``name`` is what users pass as
    ``Curve(..., family=name)``. Called once, when the plugin manager is built. Returns nothing.
    """


@hookspec
def modeconn_register_optimizers(registry: PluginRegistry) -> None:
    """Add curve optimizers: ``registry.add(name, cls)``.

    An optimizer fits a curve's bends to data. Register a subclass of
    :class:`modeconn.training.CurveOptimizer` (the class, not an instance): ``fit_curve`` builds
    one per fit as ``cls(curve, lr=..., momentum=..., weight_decay=..., lr_step=...,
    lr_gamma=..., **options)``, where ``options`` are the extra keyword arguments the user gave
    ``fit_curve``. Override ``on_epoch_start(epoch)`` to act between epochs (PAM re-estimates
    the permutation of end point B there), ``perturb(x, y, t)`` to change each batch's inputs
    against ``r(t)`` (PGD-robust training), ``sample_t()`` or ``loss(x, y)`` to change what a
    step minimizes, and ``state_dict``/``load_state_dict`` for state that must survive a resume.
    ``"sgd"`` is built in. ``name`` is what users pass as ``fit_curve(..., optimizer=name)``.
    Called once, when the plugin manager is built. Returns nothing.
    """


@hookspec
def modeconn_register_rules(registry: PluginRegistry) -> None:
    """Teach symmetry discovery how a module type or function treats channels.

    ``registry.add(key, rule)`` where ``key`` is an ``nn.Module`` subclass (matched for
    ``call_module`` nodes, most derived class first), a callable such as ``torch.add`` or
    ``F.relu`` (``call_function`` nodes), or a string ``"method:<name>"`` for tensor methods
    (``call_method`` nodes, e.g. ``"method:view"``). ``rule(ctx)`` receives a
    :class:`modeconn.symmetry.RuleContext` describing one graph node and declares which
    channel spaces it couples and which parameter axes follow them; see the docs page
    "How symmetry discovery works". A module class with a rule becomes a leaf of the trace.
    Each key has one rule: registering a key that the built-in table or another plugin already
    has is an error naming both plugins. Called once, when the plugin manager is built.
    Returns nothing.
    """
