"""The researcher's workflow, one function per step, each writing a run folder: ``train`` end
points, ``align`` B to A, ``fit`` a curve, ``evaluate`` a curve or a line, ``merge`` N trained
models into one, ``plot`` saved results; and ``export``, which writes one model out of a run
folder. The ``modeconn`` command line calls them; so can scripts.

Each step takes its settings as one dict (the command's table of ``config.toml``; missing keys
take the step's defaults in :data:`DEFAULTS`) and returns what it prints as a results dict.

A module per step, beside what the steps share: ``settings`` (their settings and the checks
of them), ``steps`` (the runs, data and models a step reads, the checks before it runs, its
run's state) and ``rng`` (each step's fork of torch's generators). Here a step's function
shadows its module: ``modeconn.workflow.train`` is the function.
"""

from modeconn.workflow.align import align
from modeconn.workflow.evaluate import evaluate
from modeconn.workflow.export import export
from modeconn.workflow.fit import fit
from modeconn.workflow.merge import merge
from modeconn.workflow.plot import plot
from modeconn.workflow.settings import DEFAULTS, setting_type
from modeconn.workflow.train import train

__all__ = ["DEFAULTS", "setting_type", "train", "align", "fit", "evaluate", "merge", "export", "plot"]
