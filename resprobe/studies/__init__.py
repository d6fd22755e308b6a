"""The study registry: every study declared once, one module each (see :class:`resprobe.study.Study`).

The modules of this package are discovered, not listed: a new study is a new module here that calls
:func:`register` (plus its probe in :mod:`resprobe.probes` and its test). The writer
(:func:`resprobe.report.save`), the full report and the command line iterate :func:`studies`; they name no
study themselves (``tests/test_architecture.py`` checks it)."""
from __future__ import annotations

import importlib
import pkgutil

from ..errors import UsageError
from ..study import Study

__all__ = ["register", "get", "studies", "REGISTRY"]

REGISTRY: dict[str, Study] = {}


def register(study: Study) -> Study:
    if study.name in REGISTRY and REGISTRY[study.name] is not study:
        raise ValueError(f"study {study.name!r} is declared twice")
    REGISTRY[study.name] = study
    return study


def _discover() -> None:
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")


def studies() -> list[Study]:
    """Every declared study, in report order."""
    return sorted(REGISTRY.values(), key=lambda s: (s.order, s.name))


def get(name: str) -> Study:
    if name not in REGISTRY:
        raise UsageError(f"unknown study {name!r}", f"choose one of {', '.join(s.name for s in studies())}")
    return REGISTRY[name]


_discover()
