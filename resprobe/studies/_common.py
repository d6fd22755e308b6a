"""What several study declarations share: the wording of budgets and the presence test of figures."""
from __future__ import annotations

from typing import Optional

from ..study import StudyResult

__all__ = ["has", "used", "competent_on_all"]


def has(r: StudyResult, col: str, value) -> bool:
    """Whether the result's table has a row with ``col == value``."""
    return not r.table.empty and col in r.table and (r.table[col] == value).any()


def used(k: Optional[int], n: Optional[int]) -> str:
    """``all N`` when a cap of ``k`` items takes every one of ``n``, else ``k``."""
    return f"all {n}" if k is None or (n is not None and k >= n) else f"{k}"


def competent_on_all(run) -> None:
    """Language models in the report: measure each network's competence once on (up to 256 windows of) the
    report's whole data, before a study caps its windows; the capped studies reuse it (same data spec)."""
    from ..probes.lm_common import assess_text
    assess_text(run.subjects, run.data, run.spec)
