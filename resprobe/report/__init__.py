"""Writers: CSV, strict JSON with provenance, figures, Markdown/HTML documents, the resumable lesion store,
and the one-page report. Nothing here measures: every number comes from a :class:`~resprobe.study.StudyResult`."""
from .save import save
from .store import LesionStore

__all__ = ["save", "LesionStore"]
