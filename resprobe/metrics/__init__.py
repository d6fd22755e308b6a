"""Pure functions on tensors and arrays: statistics, distances, spectra. No hooks, models or I/O."""
from .stats import bootstrap_mean_ci, bootstrap_proportion_ci, stable_seed

__all__ = ["bootstrap_mean_ci", "bootstrap_proportion_ci", "stable_seed"]
