"""The plugin contract: every hook modeconn calls, documented for plugin authors.

A plugin is a module (or object) whose functions are named like the hooks below; decorate them
with :data:`modeconn.plugin.hookimpl`. A ``modeconn_*`` function that is not a hook (a typo such as
``modeconn_register_cost``) is an error that names the hook it probably meant. Publish the
plugin in your distribution's ``pyproject.toml``::

    [project.entry-points.modeconn]
    my_plugin = "modeconn_myplugin.plugin"

Each hook receives a registry to add to. ``registry.add(name, obj)`` checks ``obj`` against
the kind's contract at once (the wrong type, or a curve family that does not select its end
points, is refused with the reason), and a name another plugin already added is an error
naming both plugins. Everything a plugin needs to import is in :mod:`modeconn.plugin`;
:mod:`modeconn.testing` checks a plugin in its own CI. modeconn's own plugins are ordinary
plugins, registered by module name before any entry point.
``MODECONN_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-ins,
``MODECONN_BLOCK_PLUGINS=name1,name2`` skips entry points by name, and
``MODECONN_TRACE_PLUGINS=1`` prints every hook call and registration on stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from modeconn.plugin_manager import PluginRegistry

hookspec = pluggy.HookspecMarker("modeconn")


@hookspec
def modeconn_register_costs(registry: PluginRegistry) -> None:
    """Add alignment costs: ``registry.add(name, cost)``.

    A cost tells :func:`modeconn.align` how to match the units of model A and model B within
    each permutation group. Register an *instance* of a subclass of
    :class:`~modeconn.plugin.ActivationCost` — implement ``matrix(stats)``: from the
    :class:`~modeconn.plugin.PairStats` of one observation site, a (units of A) x (units of B)
    tensor; set ``site_kind`` (``"post"`` or ``"pre"``) and ``maximize`` — or of
    :class:`~modeconn.plugin.WeightCost` — implement ``solve(spec, state_a, state_b)`` and
    return a permutation for every permutable group. modeconn streams the data, averages your
    matrices over a group's sites and solves the assignment. ``"correlation"``, ``"l2_preact"``
    and ``"weight_matching"`` are built in; ``name`` is what users pass as
    ``align(..., cost=name)``. Check yours with :func:`modeconn.testing.check_cost`.
    Called once, when the registry is first used. Returns nothing.
    """


@hookspec
def modeconn_register_curves(registry: PluginRegistry) -> None:
    """Add curve families: ``registry.add(name, family)``.

    Register an *instance* of a subclass of :class:`~modeconn.plugin.CurveFamily`: implement
    ``coefficients(t, num_bends)``, the ``num_bends + 2`` weights of θ_A, the bends and θ_B at
    ``t``; optionally ``bend_times`` (where bends start on the segment), ``default_bends`` and
    ``fixed_bends``. The registry refuses a family whose coefficients do not select θ_A exactly
    at t = 0 and θ_B exactly at t = 1, or do not sum to 1 in between
    (:func:`~modeconn.plugin.check_family_law`). ``"bezier"``, ``"polychain"`` and
    ``"linear"`` are built in; ``name`` is what users pass as ``Curve(..., family=name)``.
    Check yours with :func:`modeconn.testing.check_curve_family`. Called once, when the
    registry is first used. Returns nothing.
    """


@hookspec
def modeconn_register_optimizers(registry: PluginRegistry) -> None:
    """Add curve optimizers: ``registry.add(name, cls)``.

    An optimizer fits a curve's bends to data. Register a *subclass* of
    :class:`~modeconn.plugin.CurveOptimizer` (the class, not an instance): ``fit_curve`` builds
    one per fit as ``cls(curve, settings=settings, epochs=epochs, **options)``, where ``settings`` is the
    fit's :class:`~modeconn.plugin.Settings` (learning rate, momentum, weight decay, schedule,
    batch size: the base class builds the torch optimizer and schedule from it; override
    ``schedule_epochs`` if the schedule spans fewer epochs) and ``options`` are the extra keyword
    arguments the user gave ``fit_curve``, ``loss_fn`` among them when the user passed one;
    pass ``settings`` and the rest on to ``super().__init__``, and score outputs with
    ``self.criterion(output, y)`` (the user's ``loss_fn`` or the default cross-entropy) where
    your class computes a loss outside ``loss``. Under ``torchrun`` every rank builds one: draw what must agree across
    ranks from ``self.strategy.shared_seed()``, and what the loss calls is ``self.wrapped``
    (the curve or its DDP wrapper). Override ``on_fit_start(data, epochs)`` to prepare with the training batches
    (after a resume too), ``on_epoch_start(epoch)`` / ``on_epoch_end(epoch)`` to act between
    epochs (PAM switches between learning the permutation of end point B and the bends, and
    rounds the permutation at the end of its permutation epochs; what ``on_epoch_end`` changes
    is in that epoch's checkpoint), ``training_step(x, y)`` to step other tensors than the
    bends, ``perturb(x, y, t)`` to change each batch's inputs against ``r(t)`` (PGD-robust
    training: what it returns is what the network runs on), ``sample_t()`` or ``loss(x, y)``
    to change what a step minimizes, ``state_dict``/``load_state_dict`` for state that must
    survive a resume, and ``summary()`` for what the fit returns besides the curve
    (``fit_curve(...).summary``). The curve's seams for changing end points are
    :meth:`~modeconn.Curve.end_state`, :meth:`~modeconn.Curve.set_end` and
    :meth:`~modeconn.Curve.set_parametrization`. An exception in a
    method your class defines is reported naming your plugin. ``"sgd"`` is built in; ``name``
    is what users pass as ``fit_curve(..., optimizer=name)``. Check yours with
    :func:`modeconn.testing.check_optimizer`. Called once, when the registry is first used.
    Returns nothing.
    """


@hookspec
def modeconn_register_rules(registry: PluginRegistry) -> None:
    """Teach symmetry discovery how a module type or function treats channels:
    ``registry.add(key, rule)``.

    ``key`` is an ``nn.Module`` subclass (matched for ``call_module`` nodes, most derived class
    first; a module class with a rule becomes a leaf of the trace), a function such as
    ``torch.add`` or ``F.relu`` (``call_function`` nodes), or a string ``"method:<name>"`` for
    tensor methods (``call_method`` nodes, e.g. ``"method:view"``). ``rule(ctx)`` receives a
    :class:`~modeconn.plugin.RuleContext` for one graph node — arguments by parameter name,
    matched against the op's signature — declares which channel spaces the op couples and which
    parameter axes follow them, and returns the :class:`~modeconn.plugin.TensorLayout` of the
    output; see the docs page "How symmetry discovery works". A rule that reads an argument the
    call does not have, or raises, makes its node unsupported (everything it touches is fixed):
    never a guess. Each key has one rule: a key that the built-in table or another plugin
    already has is an error naming both plugins. Check yours with
    :func:`modeconn.testing.check_rule`. Called once, when the registry is first used.
    Returns nothing.
    """
