"""The degradation analysis (He et al. Fig. 1): curves read back exactly, final errors and paired
differences checked against independent evaluations, the verdict's three outcomes, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from resprobe.engine import RunSpec, evaluate, predict
from resprobe.errors import UsageError
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.probes.degradation import MARGIN, degradation_verdict, family_and_depth, read_runs, run
from resprobe.report import save
from resprobe.training import Recipe, TrainRun, train

SPEC = RunSpec(batch_size=512, n_boot=200, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deg")
    tr, te = load_dataset("synthetic(n=400,size=16)", "train"), load_dataset("synthetic(n=200,size=16)", "test")
    dirs = []
    for spec in ("cifar_plain8", "cifar_plain14", "cifar_resnet8", "cifar_resnet14"):
        torch.manual_seed(0)
        train(build_model(spec, num_classes=4), tr, te, Recipe(2, lr=0.05, schedule="cosine"), root / spec, TrainRun(progress_bar=False, config=dict(model=spec)))
        dirs.append(root / spec)
    return dirs, tr, te, root


def test_study_matches_independent_evaluations(runs):
    dirs, tr, te, root = runs
    r = run(dirs, tr, te, SPEC)
    save(r, root / "out")
    final, comps = r.detail.final, r.detail.comparisons
    for d in dirs:
        spec = d.name
        model = build_model(spec, num_classes=4)
        model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        for split, data in (("train", tr), ("test", te)):
            ref = evaluate(model, data, RunSpec(batch_size=64, progress=False), "none")["error"]
            row = final[(final.model == spec) & (final.split == split)].iloc[0]
            assert row.error == pytest.approx(ref, abs=1e-12)
            assert row.ci_low <= row.error <= row.ci_high
    # paired difference = difference of the two errors (same images), per family and split
    for _, c in comps.iterrows():
        a = final[(final.model == c.shallower) & (final.split == c.split)].error.iloc[0]
        b = final[(final.model == c.deeper) & (final.split == c.split)].error.iloc[0]
        assert c.difference == pytest.approx(b - a, abs=1e-12)
        assert c.ci_low <= c.difference <= c.ci_high
    assert set(zip(comps.shallower, comps.deeper)) == {("cifar_plain8", "cifar_plain14"),
                                                      ("cifar_resnet8", "cifar_resnet14")}
    # curves are the metrics files, epochs counted from 1
    curves = r.detail.curves
    m = pd.read_csv(dirs[1] / "metrics.csv")
    c = curves[(curves.model == "cifar_plain14") & (curves.split == "train")].sort_values("epoch")
    assert c.epoch.tolist() == [1, 2] and np.allclose(c.error, m.train_error)
    out = root / "out"
    for f in ("degradation.csv", "degradation.json", "curves.png", "curves.svg", "report.md", "report.html"):
        assert (out / f).is_file(), f
    j = json.loads((out / "degradation.json").read_text())
    assert j["verdicts"][0]["verdict"] == r.verdicts[0].verdict == "inconclusive"  # one run per network
    assert "one training run per network" in r.verdicts[0].reason
    assert {m["model"] for m in j["provenance"]["models"]} == {d.name for d in dirs}
    assert all(len(m["weights_sha256"]) == 64 for m in j["provenance"]["models"])
    long = pd.read_csv(out / "degradation.csv")
    assert set(long.kind) == {"curve", "final", "deeper_minus_shallower"}


def test_same_inputs_same_numbers(runs):
    dirs, tr, te, _ = runs
    a = run(dirs[:2], tr, te, SPEC.replace(seed=3)).detail.comparisons
    b = run(dirs[:2], tr, te, SPEC.replace(seed=3)).detail.comparisons
    pd.testing.assert_frame_equal(a, b)


def _comp(plain, res, n_seeds=3):
    rows = []
    for fam, (d, lo, hi) in (("plain", plain), ("residual", res)):
        rows.append(dict(family=fam, shallower=f"{fam}20", deeper=f"{fam}56", split="train", difference=d, ci_low=lo,
                         ci_high=hi, n_images=100, n_seeds=n_seeds, scope=f"across {n_seeds} seeds"))
    return pd.DataFrame(rows)


def test_verdict_outcomes_at_the_margin():
    m = MARGIN
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (-0.01, -0.02, -0.005))).verdict == "supported"
    # the ResNet's CI reaches into the margin but stays below it: non-inferior
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (0.003, 0.001, m - 0.001))).verdict == "supported"
    # straddling the margin: inconclusive; wholly above: the ResNets degrade too
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (m, m - 0.005, m + 0.005))).verdict == "inconclusive"
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (0.02, m + 0.001, 0.03))).verdict == "not supported"
    # no degradation of the plain nets: refuted
    assert degradation_verdict(_comp((-0.05, -0.06, -0.04), (-0.01, -0.02, 0.0))).verdict == "not supported"
    assert degradation_verdict(_comp((0.01, -0.01, 0.03), (-0.01, -0.02, 0.0))).verdict == "inconclusive"
    only_plain = _comp((0.4, 0.39, 0.41), (0, 0, 0)).iloc[:1]
    assert degradation_verdict(only_plain).verdict == "inconclusive"
    # one seed: the per-network outcome is evidence, the verdict about architectures is inconclusive
    v = degradation_verdict(_comp((0.4, 0.39, 0.41), (-0.01, -0.02, -0.005), n_seeds=1))
    assert v.verdict == "inconclusive" and v.evidence["outcome_for_these_networks"] == "supported"


def test_clear_errors(tmp_path):
    assert family_and_depth("cifar_plain56") == ("plain", 56)
    assert family_and_depth("cifar_resnet110_b") == ("residual", 110)
    with pytest.raises(UsageError, match="cannot tell the family and depth of 'mlp'"):
        family_and_depth("mlp")
    with pytest.raises(UsageError, match="no metrics.csv"):
        read_runs([tmp_path])
    with pytest.raises(UsageError, match="no training runs"):
        read_runs([])


def test_predict_unchanged_by_device_copy():
    te = load_dataset("synthetic(n=100,size=16)", "test")
    m = build_model("cifar_resnet8", num_classes=4).eval()
    spec = RunSpec(batch_size=32, progress=False)
    a, b = predict(m, te, spec), predict(m, te.to("cpu"), spec)
    assert (a.pred == b.pred).all() and np.array_equal(a.loss, b.loss)
