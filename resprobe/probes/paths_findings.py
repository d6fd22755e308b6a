"""Sentences from the paths study's summary."""
from __future__ import annotations

from typing import Sequence

__all__ = ["findings"]


def findings(summary: dict, skipped: Sequence[str] = ()) -> list[str]:
    """Sentences from the summary: each network's effective range, weighted length and peak."""
    from .paths import SHARES  # the shares the summary reports (paths imports this module)
    find = [f"{lab}: no residual unit, so no path-length analysis (every path has the same length)."
            for lab in skipped]
    for m, s in summary.items():
        if "note" in s:
            find.append(f"{m}: no effective range or weighted length: {s['note']}.")
        if "range" in s:
            w = s["weighted_length"]
            find.append(f"{m}: {s['share']:.0%} of the gradient comes from paths of length {s['range'][0]}–"
                        f"{s['range'][1]} of {s['n_units']} units ({s['fraction_of_paths']:.2%} of all paths); "
                        f"gradient-weighted mean length {w['value']:.2f} [{w['ci_low']:.2f}, {w['ci_high']:.2f}] "
                        f"against the typical {s['typical_length']:.1f}; peak at k = {s['peak_k']}.")
            find.append(f"{m}: the range for 80% / 90% / 95% of the gradient: "
                        + ", ".join(f"{r['range'][0]}–{r['range'][1]}" for sh, r in s["ranges"].items()
                                    if float(sh) in SHARES) + ".")
    return find
