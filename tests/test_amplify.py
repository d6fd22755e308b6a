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
from resprobe.engine import RunSpec
from resprobe.probes import amplify as A
from resprobe.probes import amplify_jacobian as AJ
from resprobe.probes.amplify import power_iteration, spectral_norms, unit_spectral_norms
from resprobe.report import save
from resprobe.study import Subject

from conftest import role, randomize_bn


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
    hs = view.unit_inputs(x)
    fns = [f for i, b in enumerate(view) for f in (lambda t, i=i: view.run_unit(i, t), b.branch)]
    together = spectral_norms(fns, [hs[i] for i in range(len(view)) for _ in range(2)], iters=300)
    for i, b in enumerate(view):
        for j, fn in enumerate((lambda t, i=i: view.run_unit(i, t), b.branch)):
            est = power_iteration(fn, hs[i], iters=300)
            for n in range(3):
                J = torch.autograd.functional.jacobian(lambda t: fn(t.unsqueeze(0)).squeeze(0), hs[i][n])
                exact = torch.linalg.matrix_norm(J.reshape(fn(hs[i][:1]).numel(), -1), ord=2)
                assert float(est[n]) == pytest.approx(float(exact), rel=1e-3)
                assert float(together[2 * i + j][n]) == pytest.approx(float(exact), rel=1e-3)  # all units at once
        # the unit's map from the branch's one linearization: the same spectral norms
        sig_f, sig_y, _ = unit_spectral_norms(b, hs[i], iters=300)
        assert torch.allclose(sig_f, power_iteration(b.branch, hs[i], iters=300), rtol=1e-4)
        assert torch.allclose(sig_y, power_iteration(lambda t, i=i: view.run_unit(i, t), hs[i], iters=300), rtol=1e-4)


def _profile(m, data, eps=(1e-4, 1e-3, 1e-2), power_iters=2, label="m"):
    values, view, timing = A.profile(Subject(label, m, "none"), data, RunSpec(batch_size=16, n_boot=100, progress=False),
                                     A.AmplifyOptions(eps=eps, power_iters=power_iters))
    return pd.DataFrame(A._rows(label, values, RunSpec(n_boot=100)), columns=A.COLUMNS), values


def test_random_gain_flat_in_linear_regime():
    data = load_dataset("synthetic(n=16,classes=4,size=8)", "test")
    m = _small().float()
    df, _ = _profile(m, data)
    for metric in ("random_gain_unit", "random_gain_branch", "amplifier_ratio", "kappa"):
        g = df[df["metric"] == metric].pivot_table(index="unit", columns="eps", values="value")
        assert np.allclose(g[1e-4], g[1e-3], rtol=5e-3) and np.allclose(g[1e-3], g[1e-2], rtol=2e-2), metric
    sc = df[df["metric"] == "random_gain_shortcut"]
    ident = sc[sc["unit"].isin(["layer1.0"])]
    assert np.allclose(ident["value"], 1.0, atol=1e-4)  # the identity shortcut has gain exactly 1


def test_kappa_and_the_arithmetic_identity():
    """κ = (‖ΔF‖/‖F‖)/ε by definition; the amplifier ratio is (‖ΔF‖/‖Δy‖)·‖y‖/‖F‖ per image, checked on
    an independent computation through the model's own modules."""
    data = load_dataset("synthetic(n=8,classes=4,size=8)", "test")
    m = _small().float()
    df, values = _profile(m, data, eps=(1e-3,))
    view = anatomy(m, data.input_shape)
    x = next(data.batches(8))[0]
    with torch.no_grad():
        hs = view.unit_inputs(x)
        blk = m.layer1[0]
        f0 = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(hs[0])))))
        ratio_y_f = (hs[1].flatten(1).norm(dim=1) / f0.flatten(1).norm(dim=1)).double()
    got = values[("layer1.0", "output_branch_ratio", None)]
    assert np.allclose(got, ratio_y_f.numpy(), rtol=1e-5)
    k = values[("layer1.0", "kappa", 1e-3)]
    gb = values[("layer1.0", "random_gain_branch", 1e-3)]
    # κ·‖F‖/‖x‖ is the branch gain ‖ΔF‖/‖δ‖
    nx = hs[0].flatten(1).norm(dim=1).double().numpy()
    assert np.allclose(k * f0.flatten(1).norm(dim=1).double().numpy() / nx, gb, rtol=1e-4)


def test_probe_leaves_model_untouched():
    data = load_dataset("synthetic(n=8,classes=4,size=8)", "test")
    m = _small().float()
    m.train()
    for p in m.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _profile(m, data, eps=(1e-2,))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.training and hook_count(m) == 0 and all(p.requires_grad for p in m.parameters())


def _gains(scale, n=200, units=("u0", "u1", "u2"), seed=0, kappa=None):
    """Per-image branch gains (and κ) of three units; κ defaults to the gain times 10 (‖x‖/‖F‖ = 10)."""
    rng = np.random.default_rng(seed)
    out = {}
    for u in units:
        g = np.abs(rng.normal(scale, 0.1 * scale, n))
        out[(u, "random_gain_branch", 1e-3)] = g
        out[(u, "kappa", 1e-3)] = g * (10 if kappa is None else kappa)
    return out


def test_amplifier_verdict_on_the_gain_not_the_arithmetic():
    roles = {"res": role("res", None, True), "plain": role("plain", None, False)}

    def one(res, plain, r=roles, n_boot=200):
        vs = A.amplifier_verdicts(r, {"res": res, "plain": plain}, 1e-3, n_boot)
        assert len(vs) == 1
        return vs[0]
    v = one(_gains(2.0), _gains(1.0))
    assert v.verdict == "supported" and v.statistic == pytest.approx(np.log(2), abs=0.03)
    assert one(_gains(0.5), _gains(1.0)).verdict == "not supported"
    # 10% more gain: above 0 but not by the margin log(1.25): not supported
    v = one(_gains(1.1), _gains(1.0))
    assert v.verdict == "not supported" and 0 < v.ci_low and v.ci_high < np.log(1.25)
    v = one(_gains(1.25, seed=1), _gains(1.0, seed=2))
    assert v.verdict == "inconclusive" and v.ci_low < np.log(1.25) < v.ci_high
    # the audit's case: κ higher for the ResNet only through ‖x‖/‖F‖ (gain part −0.33): not supported, and the
    # arithmetic part is reported beside it
    v = one(_gains(0.72, kappa=40), _gains(1.0, kappa=10))
    ev = v.evidence["res vs plain"]
    assert v.verdict == "not supported" and ev["log_kappa_ratio"] > 0 and ev["log_gain_ratio"] < -0.3
    assert ev["arithmetic_part"] == pytest.approx(np.log(4), abs=1e-6)
    v = A.amplifier_verdicts({"res": roles["res"]}, {"res": _gains(2.0)}, 1e-3)[0]
    assert v.verdict == "not applicable" and "--plain" in v.reason
    v = one(_gains(2.0), _gains(1.0), r={"res": role("res", None, True, error=0.896), "plain": roles["plain"]}, n_boot=20)
    assert v.verdict == "not applicable"


def test_study_outputs_and_cli_errors(tmp_path, capsys):
    data = load_dataset("synthetic(n=8,classes=4,size=8)", "test")
    subjects = [Subject("res", _small().float(), "none", {"model": "cifar_resnet8"}),
                Subject("plain", _small("cifar_plain8(width=4)").float(), "none", {"model": "cifar_plain8"})]
    r = A.run(subjects, data, RunSpec(batch_size=8, n_boot=100, progress=False), A.AmplifyOptions(eps=(1e-3,),
                                                                                                 power_iters=2))
    save(r, tmp_path)
    assert list(r.table.columns) == A.COLUMNS
    meta = json.loads((tmp_path / "amplify.json").read_text())
    # two random-init networks with no recorded recipe: the contrast is not applicable, saying why
    assert meta["verdicts"][0]["verdict"] == "not applicable" and "recipe" in meta["verdicts"][0]["reason"]
    assert meta["timing"]["res"]["power_iteration_per_forward"] > 0
    for f in meta["files"]:
        assert (tmp_path / f).stat().st_size > 0
    assert main(["amplify", "--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=8)", "--eps", "0,2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--eps values must lie in [1e-6, 1)" in capsys.readouterr().err


def test_values_do_not_depend_on_batch_size():
    """Random directions are drawn per image (a generator seeded by the image's index): the same
    values whatever the batch size, as --batch-size's help promises."""
    m = _small().float()
    data = load_dataset("synthetic(n=12,classes=4,size=8)", "test")
    runs = []
    for bs in (4, 12):
        values, _, _ = A.profile(Subject("m", m, "none"), data, RunSpec(batch_size=bs, n_boot=100, progress=False),
                                 A.AmplifyOptions(eps=(1e-3,), power_iters=3))
        runs.append(values)
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        np.testing.assert_allclose(runs[0][k], runs[1][k], rtol=1e-4, atol=1e-7, err_msg=str(k))


@pytest.mark.parametrize("spec,shape", [("cifar_resnet8(width=4,shortcut=B)", (3, 8, 8)),
                                        ("cifar_preresnet8(width=4)", (3, 8, 8)),
                                        ("torchvision:resnet18", (3, 16, 16)),
                                        ("torchvision:resnet50(width_per_group=8)", (3, 32, 32))])
def test_closed_form_maps_equal_the_linearization(spec, shape):
    """The closed-form J v and Jᵀ u of conv/BN/ReLU chains (branches, projection shortcuts) equal those of
    torch.func's linearization and pullback; a branch with another nonlinearity is left to the latter."""
    m = _small(spec)
    view = anatomy(m, shape)
    x = torch.randn(2, *shape, dtype=torch.float64)
    hs = view.unit_inputs(x)
    closed = 0
    for i, u in enumerate(view):
        fns = [u.branch] + ([u.shortcut] if u.residual and u.shortcut_kind == "projection" else [])
        for fn in fns:
            got = AJ.chain_linear(fn, hs[i])
            assert got is not None, (spec, u.name)
            out, jv, jtu = got
            with torch.enable_grad():
                ref_out, rjv, rjtu = AJ.linear_maps(fn, hs[i])
            v, w = torch.randn_like(hs[i]), torch.randn_like(out)
            assert torch.allclose(out, ref_out)
            assert torch.allclose(jv(v), rjv(v), rtol=1e-9, atol=1e-12)
            assert torch.allclose(jtu(w), rjtu(w), rtol=1e-9, atol=1e-12)
            closed += 1
    assert closed >= len(view)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()
    assert AJ.chain_linear(lambda t: torch.nn.functional.gelu(conv(t)), x) is None  # not a ReLU: linearized
    assert AJ.chain_linear(lambda t: conv(t) * 2, x) is None  # an operation between no modules: linearized
