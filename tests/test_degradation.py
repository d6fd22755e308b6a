"""The degradation analysis (He et al. Fig. 1): curves read back exactly, final errors and paired
differences checked against independent evaluations, the verdict's three outcomes, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from resprobe.engine import evaluate, predict
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.report.degradation import degradation_study, degradation_verdict, family_and_depth, read_runs
from resprobe.training import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("deg")
    tr, te = load_dataset("synthetic(n=400,size=16)", "train"), load_dataset("synthetic(n=200,size=16)", "test")
    dirs = []
    for spec in ("cifar_plain8", "cifar_plain14", "cifar_resnet8", "cifar_resnet14"):
        torch.manual_seed(0)
        train(build_model(spec, num_classes=4), tr, te, 2, root / spec, lr=0.05, schedule="cosine", normalize="none",
              progress=False, config=dict(model=spec))
        dirs.append(root / spec)
    return dirs, tr, te, root


def test_study_matches_independent_evaluations(runs):
    dirs, tr, te, root = runs
    res = degradation_study(dirs, tr, te, out=root / "out", progress=False, n_boot=200)
    final, comps = res["final"], res["comparisons"]
    for d in dirs:
        spec = d.name
        model = build_model(spec, num_classes=4)
        model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        for split, data in (("train", tr), ("test", te)):
            ref = evaluate(model, data, 64, "none", progress=False)["error"]
            row = final[(final.model == spec) & (final.split == split)].iloc[0]
            assert row.error == pytest.approx(ref, abs=1e-12)
            assert row.ci_low <= row.error <= row.ci_high
    # paired difference = difference of the two errors (same images), per family and split
    for _, r in comps.iterrows():
        a = final[(final.model == r.shallower) & (final.split == r.split)].error.iloc[0]
        b = final[(final.model == r.deeper) & (final.split == r.split)].error.iloc[0]
        assert r.difference == pytest.approx(b - a, abs=1e-12)
        assert r.ci_low <= r.difference <= r.ci_high
    assert set(zip(comps.shallower, comps.deeper)) == {("cifar_plain8", "cifar_plain14"),
                                                      ("cifar_resnet8", "cifar_resnet14")}
    # curves are the metrics files, epochs counted from 1
    curves = res["curves"]
    m = pd.read_csv(dirs[1] / "metrics.csv")
    c = curves[(curves.model == "cifar_plain14") & (curves.split == "train")].sort_values("epoch")
    assert c.epoch.tolist() == [1, 2] and np.allclose(c.error, m.train_error)
    out = root / "out"
    for f in ("degradation.csv", "degradation.json", "curves.png", "curves.svg", "report.md", "report.html"):
        assert (out / f).is_file(), f
    j = json.loads((out / "degradation.json").read_text())
    assert j["verdict"]["verdict"] == res["verdict"]["verdict"]
    assert {m["model"] for m in j["provenance"]["models"]} == {d.name for d in dirs}
    assert all(len(m["weights_sha256"]) == 64 for m in j["provenance"]["models"])
    long = pd.read_csv(out / "degradation.csv")
    assert set(long.kind) == {"curve", "final", "deeper_minus_shallower"}


def test_same_inputs_same_numbers(runs):
    dirs, tr, te, _ = runs
    a = degradation_study(dirs[:2], tr, te, progress=False, n_boot=200, seed=3)["comparisons"]
    b = degradation_study(dirs[:2], tr, te, progress=False, n_boot=200, seed=3)["comparisons"]
    pd.testing.assert_frame_equal(a, b)


def _comp(plain, res):
    rows = []
    for fam, (d, lo, hi) in (("plain", plain), ("residual", res)):
        rows.append(dict(family=fam, shallower=f"{fam}20", deeper=f"{fam}56", split="train", difference=d, ci_low=lo,
                         ci_high=hi, n_images=100))
    return pd.DataFrame(rows)


def test_verdict_outcomes():
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (-0.01, -0.02, -0.005)))["verdict"] == "supported"
    assert degradation_verdict(_comp((0.4, 0.39, 0.41), (0.001, -0.002, 0.004)))["verdict"] == "supported"
    v = degradation_verdict(_comp((0.4, 0.39, 0.41), (0.004, 0.001, 0.006)))
    assert v["verdict"] == "not supported" and v["residual_degrades"]
    assert degradation_verdict(_comp((-0.05, -0.06, -0.04), (-0.01, -0.02, 0.0)))["verdict"] == "not supported"
    assert degradation_verdict(_comp((0.01, -0.01, 0.03), (-0.01, -0.02, 0.0)))["verdict"] == "inconclusive"
    only_plain = _comp((0.4, 0.39, 0.41), (0, 0, 0)).iloc[:1]
    assert degradation_verdict(only_plain)["verdict"] == "inconclusive"


def test_clear_errors(tmp_path):
    assert family_and_depth("cifar_plain56") == ("plain", 56)
    assert family_and_depth("cifar_resnet110_b") == ("residual", 110)
    with pytest.raises(ValueError, match="cannot tell the family and depth of 'mlp'"):
        family_and_depth("mlp")
    with pytest.raises(FileNotFoundError, match="no metrics.csv"):
        read_runs([tmp_path])
    with pytest.raises(ValueError, match="no training runs"):
        read_runs([])


def test_predict_unchanged_by_device_copy():
    te = load_dataset("synthetic(n=100,size=16)", "test")
    m = build_model("cifar_resnet8", num_classes=4).eval()
    a, b = predict(m, te, 32, progress=False), predict(m, te.to("cpu"), 32, progress=False)
    assert (a.pred == b.pred).all() and np.array_equal(a.loss, b.loss)
