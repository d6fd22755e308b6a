"""Identity distance: CKA properties, streaming moments, metrics against independent computations,
hygiene, and the report."""
from __future__ import annotations

import base64
import json
import re

import pandas as pd
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resprobe.anatomy import hook_count
from hooktrace import Trace
from resprobe.io.data import load_dataset
from resprobe.metrics.similarity import (MinibatchCKA, PerImageMoments, cka_linear, cka_unbiased_full, cosine,
                                         hsic_unbiased, linear_gram, norm_ratio)
from resprobe.models import build_model
from resprobe.engine import RunSpec
from resprobe.probes import identity as I
from resprobe.report import save
from resprobe.study import Subject

from conftest import RESNET20, RESNET56, ROOT, TEST_ARCHIVE, need_shared, randomize_bn, role


def _pair(n=1024, d=40, noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 30, generator=g)
    y = torch.tanh(x @ w / 6) + noise * torch.randn(n, 30, generator=g)
    return x, y


# --- CKA ---------------------------------------------------------------------------------------------

def test_cka_of_itself_is_one():
    x, _ = _pair()
    assert cka_linear(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka_unbiased_full(x, x) == pytest.approx(1.0, abs=1e-10)
    mb = MinibatchCKA(32)
    mb.update(x, x)
    assert mb.value() == pytest.approx(1.0, abs=1e-10)


def test_cka_invariances():
    x, y = _pair()
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    base = cka_linear(x, y)
    assert cka_linear(x, (y.double() @ q)) == pytest.approx(base, abs=1e-9)   # orthogonal transform
    assert cka_linear(3.7 * x, 0.01 * y) == pytest.approx(base, abs=1e-9)    # isotropic scaling
    mb1, mb2 = MinibatchCKA(32), MinibatchCKA(32)
    mb1.update(x, y)
    mb2.update(5 * x, y.double() @ q)
    assert mb2.value() == pytest.approx(mb1.value(), abs=1e-9)
    # not invariant to a non-isotropic scaling of the features: the property is not vacuous
    s = torch.ones(30)
    s[0] = 20.0
    assert abs(cka_linear(x, y * s) - base) > 1e-3


def test_minibatch_cka_matches_full_batch():
    x, y = _pair(n=4096, noise=0.5)
    full = cka_unbiased_full(x, y)
    assert cka_linear(x, y) == pytest.approx(full, abs=0.02)  # the biased estimator agrees at this n
    for m in (16, 64, 256):
        mb = MinibatchCKA(m)
        mb.update(x, y)
        assert mb.value() == pytest.approx(full, abs=0.03), m
    independent = MinibatchCKA(64)
    independent.update(x, torch.randn(4096, 30, generator=torch.Generator().manual_seed(9)))
    assert abs(independent.value()) < 0.05


def test_hsic_unbiased_matches_its_definition():
    """Against the U-statistic written out with explicit loops (Song et al. 2012, eq. 5)."""
    x, y = _pair(n=9, d=4)
    K, L = linear_gram(x), linear_gram(y)
    n = 9
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
    t1 = sum(Kt[i, j] * Lt[j, i] for i in range(n) for j in range(n))
    t2 = Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
    t3 = 2 / (n - 2) * sum(Kt[i, j] * Lt[j, k] for i in range(n) for j in range(n) for k in range(n))
    ref = (t1 + t2 - t3) / (n * (n - 3))
    assert float(hsic_unbiased(K, L)) == pytest.approx(float(ref), rel=1e-10)
    with pytest.raises(ValueError):
        hsic_unbiased(K[:3, :3], L[:3, :3])


def test_per_image_moments_match_torch_std():
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(b, 4, 5, 5, generator=g) * 2 + 3 for b in (5, 17, 1, 40)]
    pm = PerImageMoments()
    for c in chunks:
        pm.update(c)
    allv = torch.cat([c.reshape(-1) for c in chunks]).double()
    assert pm.n_images == 63 and pm.per_image == 100
    assert pm.std == pytest.approx(float(allv.std()), rel=1e-6)
    with pytest.raises(ValueError, match="elements per image"):
        pm.update(torch.zeros(2, 3))


def test_bootstrap_pooled_std_is_the_std_of_resampled_images():
    from resprobe.metrics.stats import bootstrap_pooled_std_ci, pooled_std_from_counts
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 2, 3, 3, generator=g).double() * torch.linspace(0.5, 3, 30).view(30, 1, 1, 1)
    s1, s2 = x.reshape(30, -1).sum(1).numpy(), (x.reshape(30, -1) ** 2).sum(1).numpy()
    rng = np.random.default_rng(0)
    counts = rng.multinomial(30, np.full(30, 1 / 30), size=5)
    got = pooled_std_from_counts(counts, s1[:, None], s2[:, None], [18])[:, 0]
    for c, v in zip(counts, got):  # the same resample built explicitly: images repeated by their counts
        resampled = torch.cat([x[i].reshape(-1).repeat(int(k)) for i, k in enumerate(c) if k])
        assert v == pytest.approx(float(resampled.std()), rel=1e-10)
    lo, hi = bootstrap_pooled_std_ci(s1[:, None], s2[:, None], [18], n_boot=400, seed=3)
    full = float(x.std())
    assert lo[0] < full < hi[0]
    same = np.tile(s1[:1], 30)[:, None], np.tile(s2[:1], 30)[:, None]  # 30 identical images: no spread
    lo2, hi2 = bootstrap_pooled_std_ci(*same, [18], n_boot=50)
    assert lo2[0] == pytest.approx(hi2[0], rel=1e-9)


def test_per_image_norms_and_cosines():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 5.0], [0.0, 2.0]])
    assert norm_ratio(a, b).tolist() == pytest.approx([1.0, 0.5])
    assert cosine(a, b).tolist() == pytest.approx([0.8, 0.0])


# --- the probe against independent computations ------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic(n=80,classes=4)", "test")


def _model(spec, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(spec, num_classes=4), seed).eval()


def _profile(m, data, label="m", batch_size=256, n_boot=100, normalize="none", **options):
    options.setdefault("cka_images", None)
    spec = RunSpec(batch_size=batch_size, n_boot=n_boot, progress=False)
    return I.profile(Subject(label, m, normalize), data, spec, I.IdentityOptions(**options))[0]


def _shortcut_a(x, planes):
    """He et al. option A, written out independently of the zoo."""
    if x.shape[1] == planes:
        return x
    x = x[:, :, ::2, ::2]
    pad = (planes - x.shape[1]) // 2
    return F.pad(x, (0, 0, 0, 0, pad, planes - x.shape[1] - pad))


def _independent_ratios(model, x, names):
    """‖F‖/‖S‖ and cos(S, y) per block from the model's own forward, via hooks on bn2 and the block."""
    with torch.no_grad(), Trace(model, names + [n + ".bn2" for n in names], input=True, output=True) as tr:
        model(x)
    out = {}
    for n in names:
        xin, f, yout = tr[n].input, tr[n + ".bn2"].output, tr[n].output
        s = _shortcut_a(xin, f.shape[1])
        ratio = (f.flatten(1).norm(dim=1) / s.flatten(1).norm(dim=1)).double()
        cos = F.cosine_similarity(s.flatten(1).double(), yout.flatten(1).double(), dim=1)
        out[n] = (ratio, cos)
    return out


def test_ratio_and_cosine_match_hooked_forward(data):
    m = _model("cifar_resnet20")
    df = _profile(m, data, batch_size=32, n_boot=100)
    x = torch.cat([b for b, _, _ in data.batches(80)])
    names = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    ref = _independent_ratios(m, x, names)
    for n in names:
        got = df[(df["unit"] == n)].set_index("metric")["value"]
        assert got["residual_ratio"] == pytest.approx(float(ref[n][0].mean()), rel=1e-5)
        assert got["cosine"] == pytest.approx(float(ref[n][1].mean()), rel=1e-5)
        xin = torch.cat([b for b, _, _ in data.batches(80)])
        with torch.no_grad(), Trace(m, [n, n + ".bn2"], input=True, output=True) as tr:
            m(xin)
        bratio = (tr[n + ".bn2"].output.flatten(1).norm(dim=1) / tr[n].input.flatten(1).norm(dim=1)).double()
        assert got["branch_ratio"] == pytest.approx(float(bratio.mean()), rel=1e-5)  # ‖F‖/‖x‖, also at layer2.0
        if tr[n].input.shape == tr[n].output.shape:
            bi = 1 - F.cosine_similarity(tr[n].input.flatten(1).double(), tr[n].output.flatten(1).double(), dim=1)
            assert got["block_influence"] == pytest.approx(float(bi.mean()), rel=1e-5, abs=1e-9)
        else:
            assert "block_influence" not in got


def test_values_do_not_depend_on_batch_size(data):
    m = _model("cifar_resnet20")
    a = _profile(m, data, batch_size=16, cka_minibatch=16)
    b = _profile(m, data, batch_size=80, cka_minibatch=16)
    c = _profile(m, data, batch_size=50, cka_minibatch=16)  # not a multiple: rounded down to 48 for whole groups
    pd.testing.assert_frame_equal(a, b)  # per-image metrics, CKA minibatches of 16 and pooled stds alike
    pd.testing.assert_frame_equal(a, c)
    assert (a[a["metric"] == "cka"]["n_images"] == len(data)).all()  # every image in a CKA minibatch


def test_response_std_matches_hooked_layers(data):
    m = _model("cifar_resnet20")
    df = _profile(m, data, batch_size=32)
    rs = df[df["metric"] == "response_std"]
    assert len(rs) == 19  # stem conv + 18 block convs: the 3x3 layers of a 20-layer net
    layers = rs["unit"].tolist()
    assert layers[:3] == ["bn1", "layer1.0.bn1", "layer1.0.bn2"]
    x = torch.cat([b for b, _, _ in data.batches(80)])
    with torch.no_grad(), Trace(m, layers) as tr:
        m(x)
    for layer, v, lo, hi, n in zip(layers, rs["value"], rs["ci_low"], rs["ci_high"], rs["n_images"]):
        assert v == pytest.approx(float(tr[layer].output.double().std()), rel=1e-6)
        assert lo < v < hi and n == len(data)


def test_response_layers_preact_and_plain():
    pre = I.response_layers(build_model("cifar_preresnet20"))
    measured = [m for _, m in pre]
    assert measured[:3] == ["conv1", "layer1.0.bn2", "layer1.0.conv2"]  # BN that follows, else the conv
    plain = I.response_layers(build_model("cifar_plain20"))
    assert len(plain) == 19 and all(m.endswith(("bn1", "bn2")) for _, m in plain)


def test_grad_cosine_matches_autograd(data):
    m = _model("cifar_resnet20")
    df = _profile(m, data, batch_size=40, grad=True)
    x, y = next(data.batches(80))[:2]
    assert df[(df["unit"] == "layer2.0") & (df["metric"] == "grad_cosine")].empty  # F(x), x differ in shape
    names = ["layer1.1", "layer2.1", "layer3.2"]
    with Trace(m, names, input=True, detach=False, clone=False) as tr, \
            Trace(m, [n + ".bn2" for n in names]) as tf:
        loss = F.cross_entropy(m(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, [tr[n].input for n in names])
    for n, g in zip(names, grads):
        ref = F.cosine_similarity(tf[n + ".bn2"].output.flatten(1).double(), g.flatten(1).double(), dim=1).mean()
        got = df[(df["unit"] == n) & (df["metric"] == "grad_cosine")]["value"].item()
        assert got == pytest.approx(float(ref), rel=1e-4, abs=1e-6)


def test_plain_blocks_have_no_residual_ratio(data):
    df = _profile(_model("cifar_plain20"), data, "p", batch_size=40)
    assert not (df["metric"] == "residual_ratio").any() and not (df["metric"] == "branch_ratio").any()
    rc = df[df["metric"] == "relative_change"]
    assert set(rc["unit"]) == {f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)} - {"layer2.0", "layer3.0"}
    assert (df[df["metric"] == "cka"]["value"].notna()).all()


def test_a_nonfinite_activation_stops_the_study_and_huge_finite_ones_do_not(data):
    from resprobe.engine import NonFiniteError
    m = _model("cifar_resnet20")
    with torch.no_grad():
        m.layer2[1].bn1.running_var[0] = -1.0  # sqrt of a negative variance: NaN from layer2.1 on
    with pytest.raises(NonFiniteError, match="non-finite"):
        _profile(m, data, batch_size=32)
    # the last unit's output finite but beyond 1.8e19: its float32 squares overflow, so its Σy² is infinite;
    # the element-wise check then finds every element finite and the study goes on
    m = _model("cifar_resnet20")
    with torch.no_grad():
        m.layer3[2].bn2.weight.mul_(1e21)
        m.layer3[2].bn2.bias.mul_(1e21)
    df = _profile(m, data, batch_size=32, metrics=("cka",))
    assert len(df) and np.isfinite(df[df["unit"] == "layer3.1"]["value"]).all()


def test_walk_keeps_nothing_of_a_unit_while_the_next_one_runs():
    import weakref
    from resprobe.anatomy import anatomy
    m = _model("cifar_resnet20")
    view = anatomy(m, (3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    alive = []
    # while the second unit's branch runs, is anything of the first unit but its output still referenced?
    hook = m.layer1[1].conv1.register_forward_pre_hook(lambda mod, args: alive.append([r() is not None for r in refs]))
    try:
        with torch.no_grad():
            walk = view.walk(view.stem(x))
            st = next(walk)
            refs = [weakref.ref(t) for t in (st.x, st.f)]
            y = st.y
            del st
            nxt = next(walk)
    finally:
        hook.remove()
    assert alive == [[False, False]] and nxt.x is y


def test_hygiene_on_exception_mid_probe(data, monkeypatch):
    m = _model("cifar_resnet20")
    m.train()
    flags = [p.requires_grad for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = {"n": 0}
    from resprobe.probes import identity_measure as IM
    orig = IM._norm_metrics

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second batch
            raise RuntimeError("mid-probe")
        return orig(*a, **k)

    monkeypatch.setattr(IM, "_norm_metrics", boom)
    with pytest.raises(RuntimeError, match="mid-probe"):
        _profile(m, data, batch_size=16, grad=True)
    assert hook_count(m) == 0 and m.training and all(x.training for x in m.modules())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_effective_depth_counts_only_decided_units_and_findings_state_ci_rankings():
    vals = [(0.9, 0.85, 0.95), (0.2, 0.15, 0.25), (0.1, 0.05, 0.15), (0.5, 0.4, 0.6), (0.299, 0.28, 0.32)]
    rows = [dict(model="a", block=f"layer1.{i}", unit=f"layer1.{i}", stage=0, index_in_stage=i, downsample=False,
                 metric=metric, value=v, ci_low=lo, ci_high=hi, n_images=10)
            for metric in ("residual_ratio", "branch_ratio") for i, (v, lo, hi) in enumerate(vals)]
    df = pd.DataFrame(rows)
    e = I.effective_depth(df, 0.3)["a"]
    # layer1.4 (0.299) straddles the threshold: undecided, not near identity
    assert e["effective_depth"] == 2 and e["near_identity_units"] == ["layer1.1", "layer1.2"]
    assert e["undecided_units"] == ["layer1.4"]
    text = " ".join(I.findings(df, 0.3))
    assert "effective depth 2 of 5" in text and "layer1.1–layer1.2" in text and "1 undecided" in text
    assert "first block layer1.0 ‖F‖/‖x‖ 0.900 [0.850, 0.950], larger than every later block's" in text
    # overlapping CIs: no ranking is stated
    df.loc[df["unit"] == "layer1.0", "ci_low"] = 0.55
    df.loc[df["unit"] == "layer1.3", "ci_high"] = 0.7
    assert "not distinguishable from the later blocks' (CIs overlap)" in " ".join(I.findings(df, 0.3))


def test_response_std_verdict_boundaries_and_without_twin():
    n, L = 200, 5
    rng = np.random.default_rng(0)

    def resp(scale):
        r = rng.normal(0, scale, (n, L, 50))
        return dict(s1=r.sum(2), s2=(r ** 2).sum(2), per_image=[50] * L)

    def one(roles, resps, **kw):
        vs = I.response_std_verdicts(pd.DataFrame(), roles, resps, **kw)
        assert len(vs) == 1
        return vs[0]
    roles = {"res": role("res", None, True), "plain": role("plain", None, False)}
    v = one(roles, {"res": resp(0.5), "plain": resp(1.0)}, n_boot=200)
    assert v.verdict == "supported" and v.statistic == pytest.approx(0.5, rel=0.05) and v.ci_high < 0.8
    # 10% smaller is below 1 but not by the margin (0.8): not supported (an equivalence test)
    v = one(roles, {"res": resp(0.9), "plain": resp(1.0)}, n_boot=200)
    assert v.verdict == "not supported" and 0.8 < v.ci_low and v.ci_high < 1
    v = one(roles, {"res": resp(0.8), "plain": resp(1.0)}, n_boot=200)
    assert v.verdict == "inconclusive" and v.ci_low < 0.8 < v.ci_high
    v = one(roles, {"res": resp(2.0), "plain": resp(1.0)}, n_boot=200)
    assert v.verdict == "not supported"
    v = one({"res": roles["res"]}, {"res": resp(0.5)})
    assert v.verdict == "not applicable" and "plain twin" in v.reason
    # a twin at chance: not applicable whatever the ratio
    v = one({"res": roles["res"], "plain": role("plain", None, False, error=0.9)}, {"res": resp(0.5), "plain": resp(1.0)},
            n_boot=50)
    assert v.verdict == "not applicable" and "plain is not a competent predictor" in v.reason
    # across seeds: ratios 0.50, 0.52, 0.48 -> t-interval on logs below 0.8; per-seed values shown
    roles3 = {f"{f}/s{s}": role(f, s, f == "res") for f in ("res", "plain") for s in range(3)}
    resps = {f"res/s{s}": resp(0.5 + 0.02 * (s - 1)) for s in range(3)}
    resps.update({f"plain/s{s}": resp(1.0) for s in range(3)})
    v = one(roles3, resps, n_boot=100)
    assert v.verdict == "supported" and v.scope.startswith("across 3 seeds (") and v.n_seeds == 3
    assert len(v.per_seed) == 3 and 0 < v.ci_low < v.ci_high < 0.8 and "log" in v.interval


def _identity_table(lab, ratios, ci=0.02, downsample=()):
    return pd.DataFrame([dict(model=lab, unit=f"u{i}", metric="residual_ratio", value=r, ci_low=r - ci, ci_high=r + ci,
                              downsample=f"u{i}" in downsample, n_images=100) for i, r in enumerate(ratios)])


def test_near_identity_verdict_both_sides_of_its_margin():
    roles = {"r": role("r", None, True)}
    v = I.near_identity_verdicts(_identity_table("r", [0.1, 0.15, 0.2, 2.0], downsample=("u3",)), roles)[0]
    assert v.verdict == "supported" and v.statistic == pytest.approx(0.15) and v.ci_high == pytest.approx(0.17)
    v = I.near_identity_verdicts(_identity_table("r", [0.6, 0.7, 0.8]), roles)[0]
    assert v.verdict == "not supported" and v.ci_low == pytest.approx(0.68)
    assert I.near_identity_verdicts(_identity_table("r", [0.28, 0.3, 0.32]), roles)[0].verdict == "inconclusive"
    v = I.near_identity_verdicts(_identity_table("r", [0.1, 0.1]), {"r": role("r", None, True, error=0.88)})[0]
    assert v.verdict == "not applicable"
    # two residual groups: one verdict each, none dropped
    t = pd.concat([_identity_table("a", [0.1, 0.1, 0.12]), _identity_table("b", [0.9, 0.8, 0.7])])
    vs = I.near_identity_verdicts(t, {"a": role("a"), "b": role("b")})
    assert [v.verdict for v in vs] == ["supported", "not supported"]


def test_refinement_verdict_both_sides_and_gates():
    def tables(lab, cost):
        ratios = np.linspace(0.1, 1.0, 8)
        ident = pd.DataFrame([dict(model=lab, unit=f"u{i}", metric="branch_ratio", value=r, downsample=False)
                              for i, r in enumerate(ratios)])
        les = pd.DataFrame([dict(model=lab, mode="baseline", deleted="", error=0.1)]
                           + [dict(model=lab, mode="single", deleted=f"u{i}", error=0.1 + c) for i, c in enumerate(cost)])
        return ident, les
    ident, les = tables("r", np.linspace(0.01, 0.3, 8))            # cost rises with the ratio: ρ = 1
    v = I.refinement_verdicts(ident, les, {"r": role("r")}, n_boot=200)[0]
    assert v.verdict == "supported" and v.statistic == pytest.approx(1.0)
    ident, les = tables("r", np.linspace(0.3, 0.01, 8))            # the reverse: ρ = −1
    assert I.refinement_verdicts(ident, les, {"r": role("r")}, n_boot=200)[0].verdict == "not supported"
    assert I.refinement_verdicts(ident, les, {"r": role("r", error=0.9)}, n_boot=50)[0].verdict == "not applicable"
    # three seeds: the CI stays within [-1, 1] (Fisher z)
    parts = [tables(f"r/s{s}", np.linspace(0.01, 0.3, 8)[np.r_[0:6, 7, 6]] if s else np.linspace(0.01, 0.3, 8))
             for s in range(3)]
    roles = {f"r/s{s}": role("r", s) for s in range(3)}
    v = I.refinement_verdicts(pd.concat([p[0] for p in parts]), pd.concat([p[1] for p in parts]), roles, n_boot=100)[0]
    assert -1 <= v.ci_low <= v.statistic <= v.ci_high <= 1 and v.n_seeds == 3


def test_study_writes_report(data, tmp_path):
    subjects = [Subject("res", _model("cifar_resnet20"), "none", {"model": "cifar_resnet20"}),
                Subject("plain", _model("cifar_plain20", 1), "none", {"model": "cifar_plain20"})]
    r = I.run(subjects, data, RunSpec(batch_size=40, n_boot=100, progress=False),
              I.IdentityOptions(grad=True, lesion_check=True))
    save(r, tmp_path)
    df = r.table
    on_disk = pd.read_csv(tmp_path / "identity.csv")
    assert list(on_disk.columns) == I.COLUMNS and len(on_disk) == len(df)
    meta = json.loads((tmp_path / "identity.json").read_text())
    assert meta["provenance"]["data"]["n_images"] == len(data) and meta["findings"]
    # random-init networks: every verdict is written, none judged (the competence gate)
    assert [v["key"] for v in meta["verdicts"]] == ["identity-near", "identity"]
    assert {v["verdict"] for v in meta["verdicts"]} == {"not applicable"}
    assert "close to identity" in meta["verdicts"][0]["conjecture"]
    html = (tmp_path / "report.html").read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) >= 5
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "effective depth" in md and "](identity_residual_ratio.png)" in md
    for f in meta["files"]:
        assert (tmp_path / f).is_file()
    # the per-unit table is in forward order
    assert md.index("| res | layer1.0 |") < md.index("| res | layer1.1 |") < md.index("| res | layer2.0 |")


@pytest.mark.slow
@pytest.mark.parametrize("weights,spec", [(RESNET20, "cifar_resnet20"), (RESNET56, "cifar_resnet56")])
def test_shared_residual_ratio_matches_straightforward_computation(weights, spec):
    """On the real checkpoints: ‖F‖/‖S‖ per block agrees with hooks on the model's own forward (1e-4 rel)."""
    need_shared(weights, TEST_ARCHIVE)
    from resprobe.loading import load_model
    data = load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test").subset(500)
    m, _ = load_model(spec, str(weights))
    df = _profile(m, data, spec, batch_size=250, normalize="imagenet")
    names = [b for b in df["unit"].unique() if b.startswith("layer") and b.count(".") == 1]
    ratios = {n: [] for n in names}
    for x, _, _ in data.batches(250, "imagenet"):
        for n, (r, _) in _independent_ratios(m, x, names).items():
            ratios[n].append(r)
    for n in names:
        got = df[(df["unit"] == n) & (df["metric"] == "residual_ratio")]["value"].item()
        assert got == pytest.approx(float(torch.cat(ratios[n]).mean()), rel=1e-4), n


def test_metric_groups_compute_the_same_numbers_alone(data, tmp_path):
    m = _model("cifar_resnet20")
    full = _profile(m, data, batch_size=40)
    norms = {"residual_ratio", "branch_ratio", "relative_change", "cosine", "block_influence"}
    for groups, metrics in ((("cka",), {"cka"}), (("norms",), norms), (("response_std",), {"response_std"})):
        part = _profile(m, data, batch_size=40, metrics=groups)
        assert set(part.metric) == metrics
        ref = full[full.metric.isin(metrics)].reset_index(drop=True)
        pd.testing.assert_frame_equal(part.reset_index(drop=True), ref)
    with pytest.raises(ValueError, match="non-empty subset of norms, cka, response_std; got ckaa"):
        I.IdentityOptions(metrics=("ckaa",))


def test_cka_subset_is_seeded_and_has_a_ci(data):
    m = _model("cifar_resnet20")
    a = _profile(m, data, batch_size=32, cka_minibatch=8, cka_images=40)
    b = _profile(m, data, batch_size=80, cka_minibatch=8, cka_images=40)
    ca, cb = a[a["metric"] == "cka"], b[b["metric"] == "cka"]
    assert (ca["n_images"] == 40).all()
    pd.testing.assert_frame_equal(ca.reset_index(drop=True), cb.reset_index(drop=True))
    assert (ca["ci_low"] <= ca["value"]).all() and (ca["value"] <= ca["ci_high"]).all()
    with pytest.raises(ValueError, match="at least one minibatch"):
        I.IdentityOptions(cka_minibatch=32, cka_images=10)


def test_cka_minibatches_are_random_images_not_consecutive_ones(data):
    """Image folders are sorted by class: minibatches of consecutive images would each hold one class and
    measure within-class similarity. The CKA is the minibatch estimator over the seeded random order."""
    m = _model("cifar_resnet20")
    order = torch.argsort(data.labels, stable=True)       # a class-sorted copy of the data
    sorted_data = type(data)(data.images[order], data.labels[order], data.classes, data.spec, data.split,
                             dict(data.source))
    df = _profile(m, sorted_data, batch_size=32, cka_minibatch=16)
    perm = I.cka_order(len(sorted_data), 0)
    x = torch.cat([b for b, _, _ in sorted_data.batches(80)])[perm]
    names = ["layer1.1", "layer3.2"]
    with torch.no_grad(), Trace(m, names, input=True, output=True) as tr:
        m(x)
    for n in names:
        ref = MinibatchCKA(16)
        ref.update(tr[n].input, tr[n].output)
        got = df[(df["unit"] == n) & (df["metric"] == "cka")]["value"].item()
        assert got == pytest.approx(ref.value(), rel=1e-6)
    labels = sorted_data.labels[perm].reshape(-1, 16)
    assert all(len(set(row.tolist())) > 1 for row in labels)


def test_cka_is_one_for_a_unit_that_is_the_identity(data):
    """Closed form: with its last BatchNorm's scale and shift at 0, a post-activation unit gives
    y = relu(x) = x (x is a ReLU output), so CKA(x, y) = 1; its neighbour stays below."""
    m = _model("cifar_resnet20")
    with torch.no_grad():
        m.layer1[1].bn2.weight.zero_()
        m.layer1[1].bn2.bias.zero_()
    df = _profile(m, data, batch_size=32, cka_minibatch=8)
    cka = df[df["metric"] == "cka"].set_index("unit")["value"]
    assert cka["layer1.1"] == pytest.approx(1.0, abs=1e-9)
    assert cka["layer1.2"] < 0.99


def test_cka_ci_equals_the_loop_over_resampled_minibatches():
    from resprobe.metrics.stats import resample_counts
    from resprobe.probes.identity import _cka_ci, _cka_value
    rng = np.random.default_rng(0)
    t = np.column_stack([np.arange(8), rng.normal(1, .3, 8), rng.normal(2, .3, 8) ** 2, rng.normal(2, .3, 8) ** 2,
                         np.full(8, 256)])
    boots = [_cka_value(t[row]) for idx, _ in resample_counts(8, 300, seed=5) for row in idx]
    assert _cka_ci(t, 300, 5) == pytest.approx(tuple(np.nanquantile(boots, [0.025, 0.975])), rel=1e-12)
    assert all(np.isnan(_cka_ci(t[:1], 300, 5)))


def test_identity_numbers_unchanged_from_the_previous_release():
    """The zoo ResNet-20 on 500 test images: every metric, CI end and layer equal to the values the previous
    release computed with its compiled one-pass kernels (tests/data, written before they were removed)."""
    need_shared(TEST_ARCHIVE)
    ref = pd.read_csv(ROOT / "tests" / "data" / "identity_zoo_resnet20_500.csv")
    data = load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test").subset(500)
    from resprobe.loading import load_model
    m, prov = load_model("cifar_resnet20", str(ROOT / "zoo" / "cifar_resnet20" / "model.pt"))
    r = I.run([Subject("r20", m.eval(), "imagenet", prov)], data, RunSpec(batch_size=100, n_boot=200, progress=False))
    got = r.table[["unit", "metric", "value", "ci_low", "ci_high"]].reset_index(drop=True)
    assert list(zip(got["unit"], got["metric"])) == list(zip(ref["unit"], ref["metric"]))
    for col in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(got[col].to_numpy(float), ref[col].to_numpy(float), rtol=2e-5, atol=1e-7)
