"""Shattered gradients (synthetic): calibration on white/brown noise, closed forms, BN handling,
the paper's qualitative findings, determinism and outputs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from resprobe.cli import main
from resprobe.metrics.signal import (autocorrelation, brown_noise, correlation_matrix, fit_exponential_log2,
                                     fit_power_law, lag1, spectral_slope, white_noise)
from resprobe.engine import RunSpec
from resprobe.probes import gradcorr as G
from resprobe.study import Subject


def test_white_and_brown_noise_calibration():
    w = np.array([lag1(white_noise(256, s)) for s in range(40)])
    b = np.array([lag1(brown_noise(256, s)) for s in range(40)])
    assert abs(w.mean()) < 0.03 and b.mean() > 0.9
    ws = np.array([spectral_slope(white_noise(256, s)) for s in range(40)])
    bs = np.array([spectral_slope(brown_noise(256, s)) for s in range(40)])
    assert abs(ws.mean()) < 0.15 and -2.3 < bs.mean() < -1.6


def test_closed_forms():
    t = np.arange(512)
    # a pure cosine with period 64: r[k] -> cos(2 pi k / 64)
    r = autocorrelation(np.cos(2 * np.pi * t / 64), 16)
    assert r[0] == 1.0 and abs(r[16] - np.cos(np.pi / 2)) < 0.05 and abs(r[1] - np.cos(2 * np.pi / 64)) < 0.01
    assert lag1(np.full(10, 3.0)) == 1.0 and np.isnan(spectral_slope(np.full(10, 3.0)))
    # power law spectrum f^-1 built exactly in the frequency domain
    f = np.fft.rfftfreq(1024)[1:]
    x = np.fft.irfft(np.concatenate([[0], f ** -0.5 * np.exp(1j * np.linspace(0, 50, len(f)))]))
    assert spectral_slope(x) == pytest.approx(-1.0, abs=0.02)
    c = correlation_matrix(np.array([[1.0, 2.0], [1.0, 2.0]]))
    assert np.allclose(c, 1.0)
    assert fit_exponential_log2([1, 2, 3], [0.5, 0.25, 0.125])["slope"] == pytest.approx(-1.0)
    assert fit_power_law([1, 4, 16], [1.0, 0.5, 0.25])["slope"] == pytest.approx(-0.5)


def test_bn_statistics_held_constant():
    """df/dx from eval-mode BN with grid statistics equals a finite difference with those statistics
    frozen, and the forward equals the training-mode forward on the grid."""
    torch.manual_seed(0)
    net = G.make_net("ff-bn", 3, width=16)
    x = G.grid(64).double()
    net.double().train()
    with torch.no_grad():
        y_train = net(x)
    g = G.input_gradients(net, x)
    with torch.no_grad():
        assert torch.allclose(net(x), y_train, atol=1e-10)  # eval with fitted stats == train-mode forward
        h = 1e-6
        fd = ((net(x + h) - net(x - h)) / (2 * h)).numpy().ravel()
    assert np.allclose(g, fd, atol=1e-5)
    # a batch-coupled gradient (training-mode BN) would differ: the choice matters
    xt = x.clone().requires_grad_(True)
    net.train()
    (gt,) = torch.autograd.grad(net(xt).sum(), xt)
    assert not np.allclose(gt.numpy().ravel(), g, atol=1e-3)


def test_looks_linear_is_linear_at_init():
    torch.manual_seed(1)
    g = G.input_gradients(G.make_net("ff-ll", 10, width=32), G.grid(64))
    assert np.allclose(g, g[0], rtol=1e-9)


def test_sweep_findings_and_determinism(tmp_path):
    opts = G.SyntheticOptions(kinds=("ff", "ff-bn", "res-bn"), depths=(1, 24), seeds=8, width=100, points=128)
    spec = RunSpec(n_boot=200, progress=False)
    df, _ = G.synthetic_sweep(opts, spec)
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")].set_index(["kind", "depth"])
    assert agg.loc[("ff", 1), "value"] > 0.9                       # 1-layer net: brown-noise-like
    lo, hi = agg.loc[("ff-bn", 24), ["ci_low", "ci_high"]]
    assert lo < 0.1 and abs(agg.loc[("ff-bn", 24), "value"]) < 0.1  # deep BN feedforward: white-like
    assert agg.loc[("res-bn", 24), "value"] > agg.loc[("ff-bn", 24), "value"] + 0.5  # ResNet keeps it
    df2, _ = G.synthetic_sweep(opts, spec)
    pd.testing.assert_frame_equal(df, df2)
    # far points decorrelate faster than neighbours in deep BN feedforward nets; their ReLU patterns are
    # nearly independent (co-activation near 1/2), the regime of the paper's 2^-L
    far = df[(df["metric"] == "corr_far") & (df["kind"] == "ff-bn")].set_index("depth")["value"]
    near = df[(df["metric"] == "corr_neighbor") & (df["kind"] == "ff-bn")].set_index("depth")["value"]
    assert far[24] < 0.2 and far[1] < near[1]
    co = df[(df["metric"] == "coactive_far") & (df["kind"] == "ff-bn")].set_index("depth")["value"]
    assert abs(co[24] - 0.5) < 0.1
    fitted = G.fits(df, "lag1")
    vs = G.synthetic_verdicts(fitted)
    assert [v.key for v in vs] == ["gradcorr-synthetic"] * 2
    for v, (kind, fit) in zip(vs, (("ff-bn", "exponential"), ("res-bn", "power_law"))):
        f = fitted[kind][fit]
        if np.isfinite(f["slope"]):
            assert v.statistic == pytest.approx(f["slope"]) and (v.ci_low, v.ci_high) == (f["ci_low"], f["ci_high"])
        else:  # too few depths above the noise floor to fit a rate
            assert v.verdict == "not applicable" and v.statistic is None


def test_synthetic_verdicts_test_the_papers_rates():
    def fitted(ff, res):
        return {"ff-bn": {"exponential": dict(slope=sum(ff) / 2, ci_low=ff[0], ci_high=ff[1]), "depths": [1, 4]},
                "res-bn": {"power_law": dict(slope=sum(res) / 2, ci_low=res[0], ci_high=res[1]), "depths": [1, 4]}}
    ff, res = G.synthetic_verdicts(fitted((-1.2, -0.9), (-0.6, -0.4)))
    assert ff.verdict == res.verdict == "supported"
    # the audit's case: BN feedforward nets losing correlation at -0.06 per layer, not at 2^-L
    ff, res = G.synthetic_verdicts(fitted((-0.1, -0.02), (-0.1, -0.05)))
    assert ff.verdict == res.verdict == "not supported"
    ff, res = G.synthetic_verdicts(fitted((-0.7, -0.3), (-0.8, -0.6)))
    assert ff.verdict == res.verdict == "inconclusive"
    assert {v.verdict for v in G.synthetic_verdicts({})} == {"not applicable"}


def test_bad_kind_seeds_and_points():
    with pytest.raises(ValueError, match="unknown kinds"):
        G.SyntheticOptions(kinds=("mlp",))
    with pytest.raises(ValueError, match="at least 2"):
        G.SyntheticOptions(seeds=1)
    with pytest.raises(ValueError, match="at least 16"):
        G.LineOptions(points=2)
    with pytest.raises(ValueError, match="at least 2"):
        G.LineOptions(lines=1)


def test_fits_have_seed_ci_and_recover_a_known_rate():
    rows = []
    rng = np.random.default_rng(0)
    for depth in (1, 2, 4, 8):
        for s in range(10):
            rows.append(dict(kind="ff-bn", depth=depth, seed=str(s), metric="lag1",
                             value=2.0 ** (-0.5 * depth) * (1 + rng.normal(0, 0.02)), ci_low=np.nan, ci_high=np.nan))
    df = pd.DataFrame(rows)
    agg = df.groupby(["kind", "depth"], as_index=False)["value"].mean().assign(seed="all", metric="lag1")
    df = pd.concat([df, agg], ignore_index=True)
    f = G.fits(df, "lag1", floor=0.01, n_boot=200)["ff-bn"]["exponential"]
    assert f["slope"] == pytest.approx(-0.5, abs=0.02) and f["ci_low"] < -0.5 < f["ci_high"]


def test_cli_same_seed_same_csv(tmp_path, capsys):
    args = ["gradcorr", "synthetic", "--kinds", "ff-bn,res-bn", "--depths", "2,8", "--seeds", "3", "--width", "32",
            "--points", "64"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a/gradcorr.csv").read_bytes() == (tmp_path / "b/gradcorr.csv").read_bytes()
    meta = json.loads((tmp_path / "a/gradcorr.json").read_text())
    assert "held constant" in meta["provenance"]["batchnorm"] and "ff-bn" in meta["summary"]["fits"]["lag1"]
    for f in meta["files"]:
        assert (tmp_path / "a" / f).stat().st_size > 1000
    assert "ff-bn: mean lag-1" in capsys.readouterr().out


# --- on trained networks --------------------------------------------------------------------------------

from resprobe.anatomy import anatomy, hook_count  # noqa: E402
from resprobe.io.data import load_dataset  # noqa: E402
from resprobe.metrics.signal import lag1_vectors  # noqa: E402
from resprobe.models import build_model  # noqa: E402

from conftest import role, randomize_bn  # noqa: E402


def test_lag1_vectors_reduces_to_scalar_lag1():
    x = brown_noise(200, 3)
    assert lag1_vectors(x[:, None]) == pytest.approx(lag1(x), rel=1e-12)
    two = np.stack([x, white_noise(200, 4) * 1e-9], 1)  # a negligible second coordinate
    assert lag1_vectors(two) == pytest.approx(lag1(x), abs=1e-6)
    assert lag1_vectors(np.ones((10, 3))) == 1.0


def _trained_setup():
    data = load_dataset("synthetic(n=40,classes=4,size=16)", "test")
    torch.manual_seed(0)
    m = randomize_bn(build_model("cifar_resnet8(width=4)", num_classes=4)).eval()
    return data, m


def test_lines_are_seeded_and_shaped():
    data, _ = _trained_setup()
    a = G.make_lines(data, G.LineOptions(3, points=32, span=0.5), seed=2)
    b = G.make_lines(data, G.LineOptions(3, points=32, span=0.5), seed=2)
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    xs, y = a[0]
    assert xs.shape == (32, 3, 16, 16) and (y == y[0]).all()
    steps = (xs[1:] - xs[:-1]).flatten(1).norm(dim=1)
    assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-4)  # evenly spaced
    assert float(steps.sum()) == pytest.approx(float(0.5 * 2 * xs[16].norm() * 31 / 32), rel=1e-3)  # x0 at t=0
    between = G.make_lines(data, G.LineOptions(2, points=16, mode="between"), seed=1)
    assert between[0][0].shape[0] == 16
    with pytest.raises(ValueError, match="need 60 images"):
        G.make_lines(data, G.LineOptions(30))
    with pytest.raises(ValueError):
        G.LineOptions(3, mode="circle")


def test_line_gradients_match_autograd_through_model():
    data, m = _trained_setup()
    view = anatomy(m, data.input_shape)
    xs, y = G.make_lines(data, G.LineOptions(2, points=16), seed=0)[0]
    for p in m.parameters():
        p.requires_grad_(False)
    grads = G.line_gradients(view, xs, y, "loss")
    x = xs.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), y, reduction="sum"), x)
    assert torch.allclose(grads[0], ref, atol=1e-6)
    assert len(grads) == 1 + len(view) and grads[1].shape == (16, 4, 16, 16)
    gl = G.line_gradients(view, xs, y, "logit")
    x = xs.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(m(x).gather(1, y[:, None]).sum(), x)
    assert torch.allclose(gl[0], ref, atol=1e-6)
    chunked = G.line_gradients(view, xs, y, "loss", chunk=5)  # 5 + 5 + 5 + 1 points: the same gradients
    assert len(chunked) == len(grads)
    for a, b in zip(chunked, grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_trained_profile_rows_hygiene_and_verdict():
    data, m = _trained_setup()
    m.train()
    spec = RunSpec(n_boot=100, progress=False)
    opts = G.LineOptions(3, points=32)
    r = G.run([Subject("m", m, "none")], data, spec, opts)
    df = r.table
    assert set(df["layer"]) == {"input", "layer1.0", "layer2.0", "layer3.0"}
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")]
    assert len(agg) == 4 and (agg["ci_low"] <= agg["value"]).all() and (agg["value"] <= agg["ci_high"]).all()
    assert r.detail.traces["m"].shape == (32,)
    assert m.training and hook_count(m) == 0 and all(p.requires_grad for p in m.parameters())
    pd.testing.assert_frame_equal(df, G.run([Subject("m", m, "none")], data, spec, opts).table)
    # a random-init network is measured but never judged: the verdict is not applicable (competence gate)
    assert r.verdicts[0].verdict == "not applicable" and "competent" in r.verdicts[0].reason
    torch.manual_seed(5)
    other = randomize_bn(build_model("cifar_resnet8(width=4)", num_classes=4), 5).eval()
    r2 = G.run([Subject("m", other, "none")], data, spec, opts)
    assert not r.table["value"].equals(r2.table["value"])


def test_shattering_verdict_boundaries():
    roles = {"r": role("r", None, True)}

    def alone(v, r=roles):
        return G.shattering_verdicts({"r": {("input", "lag1"): np.array(v)}}, r)[0]
    assert alone([0.95, 0.96, 0.97, 0.96]).verdict == "supported"
    assert alone([0.0, 0.05, -0.02, 0.01]).verdict == "not supported"
    assert alone([0.1, 0.9, 0.3, 0.8]).verdict == "inconclusive"
    assert alone([0.95, 0.96, 0.97, 0.96], {"r": role("r", None, True, error=0.88)}).verdict == "not applicable"
    roles2 = {"r": role("r", None, True), "p": role("p", None, False)}

    def pair(a, b, r=roles2):
        vs = G.shattering_verdicts({"r": {("input", "lag1"): np.array(a)}, "p": {("input", "lag1"): np.array(b)}}, r)
        assert [v.key for v in vs] == ["gradcorr", "gradcorr"]
        return vs[1]
    v = pair([0.9, 0.92, 0.91, 0.9], [0.95, 0.96, 0.97, 0.95])
    assert v.verdict == "not supported" and v.statistic == pytest.approx(-0.05)  # the plain twin is smoother
    # identical differences on every line: no spread, no interval, no decision
    assert pair([0.9, 0.91, 0.92], [0.95, 0.96, 0.97]).verdict == "inconclusive"
    assert pair([0.9, 0.91, 0.92, 0.9], [0.5, 0.52, 0.49, 0.5]).verdict == "supported"
    # a residual-minus-plain difference of 0.02 (the audit's random-init pair) is below the margin 0.1
    assert pair([0.52, 0.53, 0.50, 0.52], [0.5, 0.51, 0.49, 0.5]).verdict == "not supported"
    unknown = {"r": role("r", None, True, recipe=None), "p": role("p", None, False, recipe=None)}
    vs = G.shattering_verdicts({"r": {("input", "lag1"): np.array([0.9, 0.9])},
                                "p": {("input", "lag1"): np.array([0.1, 0.1])}}, unknown)
    assert vs[-1].verdict == "not applicable" and "recipe" in vs[-1].reason


def test_cli_gradcorr_needs_a_target(capsys, tmp_path):
    assert main(["gradcorr", "--out", str(tmp_path)]) == 2
    assert "synthetic' or --model" in capsys.readouterr().err
