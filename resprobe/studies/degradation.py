"""The degradation study (He et al. 2016 Fig. 1): plain and residual networks of two depths, from their
training runs (no subcommand; ``experiments/degradation.py`` drives it)."""
from __future__ import annotations

from .. import figures
from ..probes import degradation
from ..study import Figure, Study
from . import register

STUDY = register(Study(
    name="degradation", order=90,
    title="Degradation: plain and residual networks of two depths (He et al. 2016 Fig. 1)",
    run=degradation.run,
    figures=(Figure("curves", lambda r: figures.training_curves_plot(r.detail.curves),
                    "Training (dashed) and test (solid) error per epoch; plain networks left, ResNets right. "
                    "Degradation: the deeper plain network's training curve above the shallower one's."),),
))
