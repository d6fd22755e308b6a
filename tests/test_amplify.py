"""Amplification: power iteration against the exact spectral norm, linear regime, hygiene, verdict."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from resprobe.anatomy import anatomy, hook_count
from resprobe.cli import main
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.probes.amplify import amplification_profile, power_iteration
from resprobe.report.amplify import amplify_study, amplify_verdict

from conftest import randomize_bn


def _small(spec="cifar_resnet8(width=4)"):
    torch.manual_seed(0)
    m = randomize_bn(build_model(spec, num_classes=4)).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("spec", ["cifar_resnet8(width=4)", "cifar_resnet8(width=4,shortcut=B)", "cifar_plain8(width=4)"])
def test_power_iteration_matches_exact_spectral_norm(spec):
    m = _small(spec)
    view = anatomy(m, (3, 8, 8))
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    hs = view.block_inputs(x)
    for i, b in enumerate(view):
        for fn in (lambda t, i=i: view.run_block(i, t), b.branch):
            est = power_iteration(fn, hs[i], iters=300)
            for n in range(3):
                J = torch.autograd.functional.jacobian(lambda t: fn(t.unsqueeze(0)).squeeze(0), hs[i][n])
                exact = torch.linalg.matrix_norm(J.reshape(fn(hs[i][:1]).numel(), -1), ord=2)
                assert float(est[n]) == pytest.approx(float(exact), rel=1e-3)


def test_random_gain_flat_in_linear_regime():
    data = load_dataset("synthetic(n=16,classes=4,size=8)", "test")
    m = _small().float()
    df, _ = amplification_profile(m, data, "m", eps=(1e-4, 1e-3, 1e-2), power_iters=2, batch_size=16,
                                  progress=False, n_boot=20, weight_perturbation=False)
    for metric in ("random_gain_block", "random_gain_branch", "amplifier_ratio"):
        g = df[df["metric"] == metric].pivot_table(index="block", columns="eps", values="value")
        assert np.allclose(g[1e-4], g[1e-3], rtol=5e-3) and np.allclose(g[1e-3], g[1e-2], rtol=2e-2), metric
    sc = df[df["metric"] == "random_gain_shortcut"]
    ident = sc[sc["block"].isin(["layer1.0"])]
    assert np.allclose(ident["value"], 1.0, atol=1e-4)  # the identity shortcut has gain exactly 1


def test_probe_leaves_model_untouched():
    data = load_dataset("synthetic(n=8,classes=4,size=8)", "test")
    m = _small().float()
    m.train()
    for p in m.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    amplification_profile(m, data, "m", eps=(1e-2,), power_iters=2, progress=False, n_boot=10)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # weight perturbations undone
    assert m.training and hook_count(m) == 0 and all(p.requires_grad for p in m.parameters())


def test_verdict_is_computed_from_numbers():
    rows = []
    for m, ratio in (("res", 1.5), ("plain", 0.5)):
        for i in range(3):
            rows.append(dict(model=m, block=f"b{i}", metric="amplifier_ratio", eps=1e-3, value=ratio + 0.1 * i,
                             ci_low=ratio + 0.1 * i - 0.05, ci_high=ratio + 0.1 * i + 0.05, n_images=10))
            rows.append(dict(model=m, block=f"b{i}", metric="worst_gain_block", eps=np.nan, value=2.0 if m == "res" else 3.0,
                             ci_low=1.9, ci_high=2.1, n_images=10))
    v = amplify_verdict(pd.DataFrame(rows), plain_models=["plain"])
    assert v["verdict"] == "supported" and v["models"]["res"]["blocks_amplifier_ratio_above_1"] == 3
    assert v["models"]["res"]["amplifier_ratio_depth_spearman"] == pytest.approx(1.0)
    assert any("amplify worst-case perturbations less than plain's" in s for s in v["statements"])
    low = pd.DataFrame(rows).assign(value=lambda d: np.where(d.metric == "amplifier_ratio", 0.5, d.value))
    assert amplify_verdict(low, ["plain"])["verdict"] == "not supported"


def test_study_outputs_and_cli_errors(tmp_path, capsys):
    data = load_dataset("synthetic(n=8,classes=4,size=8)", "test")
    models = [("res", _small().float(), {"model": "cifar_resnet8"}),
              ("plain", _small("cifar_plain8(width=4)").float(), {"model": "cifar_plain8"})]
    df = amplify_study(models, data, eps=(1e-3,), power_iters=2, out=tmp_path, progress=False)
    assert set(df.columns) == {"model", "block", "metric", "eps", "value", "ci_low", "ci_high", "n_images"}
    meta = json.loads((tmp_path / "amplify.json").read_text())
    assert meta["verdict"]["verdict"] in ("supported", "not supported", "inconclusive")
    assert meta["timing"]["res"]["power_iteration_per_forward"] > 0
    for f in meta["files"]:
        assert (tmp_path / f).stat().st_size > 0
    assert main(["amplify", "--model", "cifar_resnet8", "--data", "synthetic(n=8)", "--eps", "0,2", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--eps values must lie in (0, 1)" in capsys.readouterr().err
