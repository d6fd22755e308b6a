"""The Python API in one place: load networks and data, run a study, save it.

    from resprobe import api

    data = api.load_data("imagefolder:../shared/data/cifar10-jpeg-test.tar.gz", limit=2000)
    subjects = api.load_subjects(["cifar_resnet20"], [["../shared/models/resnet20-12fca82f.th"]], data)
    result = api.lesion.run(subjects, data, api.RunSpec(), api.lesion.LesionPlan(mode="single"))
    result.table            # the long DataFrame (the CSV)
    result.verdicts         # verdict records
    api.save(result, "results/lesion20")

Language models over text: ``data, subjects = api.load_text_subjects(["smollm2-135m"], None, None, api.Access(),
api.TextRequest("text:pydoc", 128, 32))``, then ``api.lesion.run(subjects, data, api.RunSpec(batch_size=8),
api.lesion.LesionPlan(mode="skip", ks=(2, 4)))``.
"""
from __future__ import annotations

from .engine import RunSpec, evaluate, predict, resolve_device
from .lm import TextRequest, load_text_subjects
from .loading import Access, default_input_shape, load_data, load_model, load_subjects, normalization_for
from .probes import amplify, degradation, gradcorr, identity, lesion, paths, prune
from .study import versions
from .report import save
from .report.full import full_report
from .study import StudyResult, Subject

__all__ = ["Access", "RunSpec", "Subject", "StudyResult", "load_data", "load_model", "load_subjects", "normalization_for",
           "TextRequest", "load_text_subjects",
           "default_input_shape", "evaluate", "predict", "resolve_device", "save", "full_report", "versions",
           "lesion", "identity", "paths", "amplify", "gradcorr", "prune", "degradation"]
