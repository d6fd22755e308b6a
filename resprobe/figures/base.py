"""The figure kit every study's figures share. Every function returns ``(fig, ax)`` (``ax`` may be an array) and never shows
anything; :func:`save_figure` writes PNG and SVG.

Conventions, everywhere: a colour-blind-safe palette (seaborn ``colorblind``); every axis and colour bar
labelled; legends outside the data, inside the figure (constrained layout); 95% CIs drawn wherever the
data has them; integer ticks for counts; per-unit plots place each network's units by stage and relative
position within the stage (stage s spans [s, s + 1)), so networks of different depths line up; units that
cannot be deleted are marked, not drawn through.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402

__all__ = ["subplots", "palette", "legend", "plain_log_formatter", "save_figure", "unit_positions",
           "stage_axis", "n_stages", "METRIC_LABELS", "plt", "sns"]

METRIC_LABELS = {"residual_ratio": "‖F(x)‖ / ‖S(x)‖", "branch_ratio": "‖F(x)‖ / ‖x‖",
                 "relative_change": "‖y − S(x)‖ / ‖S(x)‖", "cosine": "cos(S(x), y)",
                 "block_influence": "block influence 1 − cos(x, y)", "cka": "linear CKA(input, output)",
                 "grad_cosine": "cos(F(x), ∂L/∂x)"}


def subplots(*args, **kw):
    return plt.subplots(*args, layout="constrained", **kw)


def palette(names):
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def legend(fig, ax, title: Optional[str] = None):
    handles, labels = [], []
    for a in np.atleast_1d(ax).ravel():
        h, lab = a.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels and not ll.startswith("_"):
                handles.append(hh)
                labels.append(ll)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title, title_fontsize=8)


def plain_log_formatter(ax, axis: str = "y"):
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(fmt)
    target.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def save_figure(fig, stem) -> list[Path]:
    """Write ``stem.png`` (150 dpi) and ``stem.svg``; close the figure."""
    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    try:
        with atomic_path(paths[0]) as tmp:
            fig.savefig(tmp, dpi=150, format="png")
        with atomic_path(paths[1]) as tmp:
            fig.savefig(tmp, format="svg")
    finally:
        plt.close(fig)
    return paths


def unit_positions(units: list[dict]) -> dict[str, float]:
    """``name -> x``: stage s spans [s, s + 1); a stage's units are spread evenly inside it. Block names
    get the mean position of their units."""
    out: dict[str, float] = {}
    by_stage: dict[int, list[dict]] = {}
    for u in units:
        by_stage.setdefault(u["stage"], []).append(u)
    for s, us in by_stage.items():
        for j, u in enumerate(us):
            out[u["name"]] = s + (j + 0.5) / len(us)
    blocks: dict[str, list[float]] = {}
    for u in units:
        blocks.setdefault(u["block"], []).append(out[u["name"]])
    for b, xs in blocks.items():
        out.setdefault(b, float(np.mean(xs)))
    return out


def stage_axis(ax, n_stages: int, label: str = "unit (position within its stage; dotted lines: stage boundaries)"):
    for s in range(1, n_stages):
        ax.axvline(s, ls=":", color="grey", lw=1)
    ax.set_xlim(0, max(n_stages, 1))
    ax.set_xticks([s + 0.5 for s in range(n_stages)])
    ax.set_xticklabels([f"stage {s + 1}" for s in range(n_stages)])
    ax.set_xlabel(label)


def n_stages(units: dict[str, list[dict]]) -> int:
    return max((u["stage"] for us in units.values() for u in us), default=0) + 1


