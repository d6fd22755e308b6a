"""Writers: CSV, strict JSON with provenance, figures, Markdown/HTML documents, and the one-page report. Nothing
here measures: every number comes from a :class:`~resprobe.study.StudyResult`, and what each study adds comes
from its declaration in :mod:`resprobe.studies`."""
from .save import save

__all__ = ["save"]
