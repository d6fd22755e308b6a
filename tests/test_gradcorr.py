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
from resprobe.probes import gradcorr as G


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
    kw = dict(kinds=("ff", "ff-bn", "res-bn"), depths=(1, 24), seeds=8, width=100, points=128, n_boot=200,
              progress=False)
    df, _ = G.synthetic_sweep(**kw)
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")].set_index(["kind", "depth"])
    assert agg.loc[("ff", 1), "value"] > 0.9                       # 1-layer net: brown-noise-like
    lo, hi = agg.loc[("ff-bn", 24), ["ci_low", "ci_high"]]
    assert lo < 0.1 and abs(agg.loc[("ff-bn", 24), "value"]) < 0.1  # deep BN feedforward: white-like
    assert agg.loc[("res-bn", 24), "value"] > agg.loc[("ff-bn", 24), "value"] + 0.5  # ResNet keeps it
    df2, _ = G.synthetic_sweep(**kw)
    pd.testing.assert_frame_equal(df, df2)


def test_bad_kind_and_seeds():
    with pytest.raises(ValueError, match="unknown kind"):
        G.synthetic_sweep(kinds=("mlp",), depths=(1,), seeds=2, progress=False)
    with pytest.raises(ValueError, match="at least 2"):
        G.synthetic_sweep(kinds=("ff",), depths=(1,), seeds=1, progress=False)


def test_cli_same_seed_same_csv(tmp_path, capsys):
    args = ["gradcorr", "synthetic", "--kinds", "ff-bn,res-bn", "--depths", "2,8", "--seeds", "3", "--width", "32",
            "--points", "64"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a/gradcorr.csv").read_bytes() == (tmp_path / "b/gradcorr.csv").read_bytes()
    meta = json.loads((tmp_path / "a/gradcorr.json").read_text())
    assert "held constant" in meta["provenance"]["batchnorm"] and "ff-bn" in meta["fits"]
    for f in meta["files"]:
        assert (tmp_path / "a" / f).stat().st_size > 1000
    assert "ff-bn: lag-1" in capsys.readouterr().out
