"""The researcher's workflow, one function per step, each writing a run folder: ``train`` end
points, ``align`` B to A, ``fit`` a curve, ``evaluate`` a curve or a line, ``merge`` N trained
models into one, ``plot`` saved results; and ``export``, which writes one model out of a run
folder. The ``modeconn`` command line calls them; so can scripts.

Each step takes its settings as one dict (the command's table of ``config.toml``; missing keys
take the step's defaults in :data:`DEFAULTS`) and returns what it prints as a results dict.

A module per step, beside what the steps share: ``settings`` (their settings and the checks
of them), ``steps`` (the runs, data and models a step reads, the checks before it runs, its
run's state) and ``rng`` (each step's fork of torch's generators). Here a step's function
shadows its module: ``modeconn.workflow.train_step`` is the function.
"""

from modeconn.workflow.align_step import align
from modeconn.workflow.evaluate_step import evaluate
from modeconn.workflow.export_step import export
from modeconn.workflow.fit_step import fit
from modeconn.workflow.merge_step import merge
from modeconn.workflow.plot_step import plot
from modeconn.workflow.settings import DEFAULTS, setting_type
from modeconn.workflow.train_step import train

__all__ = ["DEFAULTS", "setting_type", "train", "align", "fit", "evaluate", "merge", "export", "plot"]
