"""Figures: every function returns ``(fig, ax)`` (``ax`` may be an array) and shows nothing; :func:`save_figure`
writes PNG and SVG. One module per study's figures; :mod:`.base` holds the shared kit and conventions."""
from .base import METRIC_LABELS, save_figure, unit_positions
from .lesion import lesion_single_plot, lesion_random_k_plot, lesion_reorder_plot
from .identity import identity_metric_plot, response_std_plot
from .paths import paths_plots
from .gradients import gradient_traces_plot, correlation_heatmaps_plot, lag1_vs_depth_plot, block_profile_plot, spectra_plot
from .amplify import amplify_kappa_plot, amplify_gains_plot, amplify_cumulative_plot, amplify_arithmetic_plot
from .training import training_curves_plot, prune_plot

__all__ = ['METRIC_LABELS', 'save_figure', 'unit_positions', 'lesion_single_plot', 'lesion_random_k_plot', 'lesion_reorder_plot', 'identity_metric_plot', 'response_std_plot', 'paths_plots', 'gradient_traces_plot', 'correlation_heatmaps_plot', 'lag1_vs_depth_plot', 'block_profile_plot', 'spectra_plot', 'amplify_kappa_plot', 'amplify_gains_plot', 'amplify_cumulative_plot', 'amplify_arithmetic_plot', 'training_curves_plot', 'prune_plot']
