"""Figures: every function returns ``(fig, ax)`` (``ax`` may be an array) and shows nothing; :func:`save_figure`
writes PNG and SVG. One module per study's figures; :mod:`.base` holds the shared kit and conventions.

The names are resolved on first use (PEP 562), so a command that draws nothing never imports matplotlib or
seaborn (about a second of start-up)."""
from __future__ import annotations

import importlib

_WHERE = {"METRIC_LABELS": "base", "save_figure": "base", "unit_positions": "base", "lesion_single_plot": "lesion",
          "lesion_random_k_plot": "lesion", "lesion_reorder_plot": "lesion", "identity_metric_plot": "identity",
          "response_std_plot": "identity", "paths_plots": "paths", "gradient_traces_plot": "gradients",
          "correlation_heatmaps_plot": "gradients", "lag1_vs_depth_plot": "gradients", "block_profile_plot":
          "gradients", "spectra_plot": "gradients", "amplify_kappa_plot": "amplify", "amplify_gains_plot":
          "amplify", "amplify_cumulative_plot": "amplify", "amplify_arithmetic_plot": "amplify",
          "training_curves_plot": "training", "prune_plot": "training", "lm_single_plot": "lm",
          "lm_painters_plot": "lm", "lm_random_k_plot": "lm", "lm_prune_plot": "lm", "lm_similarity_plot": "lm", "lm_identity_plot": "lm",
          "lm_lens_plot": "lm", "lm_lens_heatmap": "lm"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value
