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

from resprobe.anatomy import Trace, hook_count
from resprobe.io.data import load_dataset
from resprobe.metrics.similarity import (MinibatchCKA, PerImageMoments, cka_linear, cka_unbiased_full, cosine,
                                         hsic_unbiased, linear_gram, norm_ratio)
from resprobe.models import build_model
from resprobe.probes import identity as I
from resprobe.report.identity import identity_study

from conftest import RESNET20, RESNET56, TEST_ARCHIVE, need_shared, randomize_bn


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
    df = I.identity_profile(m, data, "m", batch_size=32, progress=False, n_boot=50)
    x = torch.cat([b for b, _, _ in data.batches(80)])
    names = [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    ref = _independent_ratios(m, x, names)
    for n in names:
        got = df[(df["block"] == n)].set_index("metric")["value"]
        assert got["residual_ratio"] == pytest.approx(float(ref[n][0].mean()), rel=1e-5)
        assert got["cosine"] == pytest.approx(float(ref[n][1].mean()), rel=1e-5)


def test_values_do_not_depend_on_batch_size(data):
    m = _model("cifar_resnet20")
    a = I.identity_profile(m, data, "m", batch_size=16, progress=False, n_boot=50, cka_minibatch=16)
    b = I.identity_profile(m, data, "m", batch_size=80, progress=False, n_boot=50, cka_minibatch=16)
    pd.testing.assert_frame_equal(a, b)  # per-image metrics, CKA minibatches of 16 and pooled stds alike


def test_response_std_matches_hooked_layers(data):
    m = _model("cifar_resnet20")
    df = I.identity_profile(m, data, "m", batch_size=32, progress=False, n_boot=20)
    rs = df[df["metric"] == "response_std"]
    assert len(rs) == 19  # stem conv + 18 block convs: the 3x3 layers of a 20-layer net
    layers = rs["block"].tolist()
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
    df = I.identity_profile(m, data, "m", batch_size=40, grad=True, progress=False, n_boot=20)
    x, y = next(data.batches(80))[:2]
    assert df[(df["block"] == "layer2.0") & (df["metric"] == "grad_cosine")].empty  # F(x), x differ in shape
    names = ["layer1.1", "layer2.1", "layer3.2"]
    with Trace(m, names, input=True, detach=False, clone=False) as tr, \
            Trace(m, [n + ".bn2" for n in names]) as tf:
        loss = F.cross_entropy(m(x), y, reduction="sum")
        grads = torch.autograd.grad(loss, [tr[n].input for n in names])
    for n, g in zip(names, grads):
        ref = F.cosine_similarity(tf[n + ".bn2"].output.flatten(1).double(), g.flatten(1).double(), dim=1).mean()
        got = df[(df["block"] == n) & (df["metric"] == "grad_cosine")]["value"].item()
        assert got == pytest.approx(float(ref), rel=1e-4, abs=1e-6)


def test_plain_blocks_have_no_residual_ratio(data):
    df = I.identity_profile(_model("cifar_plain20"), data, "p", batch_size=40, progress=False, n_boot=20)
    assert not (df["metric"] == "residual_ratio").any()
    rc = df[df["metric"] == "relative_change"]
    assert set(rc["block"]) == {f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)} - {"layer2.0", "layer3.0"}
    assert (df[df["metric"] == "cka"]["value"].notna()).all()


def test_hygiene_on_exception_mid_probe(data, monkeypatch):
    m = _model("cifar_resnet20")
    m.train()
    flags = [p.requires_grad for p in m.parameters()]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    calls = {"n": 0}
    orig = I._block_metrics

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second batch
            raise RuntimeError("mid-probe")
        return orig(*a, **k)

    monkeypatch.setattr(I, "_block_metrics", boom)
    with pytest.raises(RuntimeError, match="mid-probe"):
        I.identity_profile(m, data, "m", batch_size=16, grad=True, progress=False)
    assert hook_count(m) == 0 and m.training and all(x.training for x in m.modules())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_effective_depth_and_findings():
    rows = [dict(model="a", block=f"layer1.{i}", stage=0, index_in_stage=i, downsample=False,
                 metric="residual_ratio", value=v, ci_low=v, ci_high=v, n_images=10)
            for i, v in enumerate([0.9, 0.2, 0.1, 0.5, 0.25])]
    df = pd.DataFrame(rows)
    e = I.effective_depth(df, 0.3)["a"]
    assert e["effective_depth"] == 2 and e["near_identity_blocks"] == ["layer1.1", "layer1.2", "layer1.4"]
    from resprobe.report.identity import identity_findings
    text = " ".join(identity_findings(df, 0.3))
    assert "effective depth 2 of 5" in text and "layer1.1–layer1.2" in text and "layer1.4" in text
    assert "first block ‖F‖/‖S‖ = 0.900, larger than the later blocks' mean 0.263" in text


def test_study_writes_report(data, tmp_path):
    models = [("res", _model("cifar_resnet20"), {"model": "cifar_resnet20"}),
              ("plain", _model("cifar_plain20", 1), {"model": "cifar_plain20"})]
    df = identity_study(models, data, batch_size=40, grad=True, lesion_check=True, out=tmp_path, progress=False,
                        n_boot=50)
    on_disk = pd.read_csv(tmp_path / "identity.csv")
    assert list(on_disk.columns) == I.COLUMNS and len(on_disk) == len(df)
    meta = json.loads((tmp_path / "identity.json").read_text())
    assert meta["provenance"]["data"]["n_images"] == len(data) and meta["findings"]
    html = (tmp_path / "report.html").read_text()
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(imgs) >= 5
    for b64 in imgs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "effective depth" in md and "](identity_residual_ratio.png)" in md
    for f in meta["files"]:
        assert (tmp_path / f).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("weights,spec", [(RESNET20, "cifar_resnet20"), (RESNET56, "cifar_resnet56")])
def test_shared_residual_ratio_matches_straightforward_computation(weights, spec):
    """On the real checkpoints: ‖F‖/‖S‖ per block agrees with hooks on the model's own forward (1e-4 rel)."""
    need_shared(weights, TEST_ARCHIVE)
    from resprobe.api import load_model
    data = load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test", limit=500)
    m, _ = load_model(spec, str(weights))
    df = I.identity_profile(m, data, spec, batch_size=250, normalize="imagenet", progress=False, n_boot=50)
    names = [b for b in df["block"].unique() if b.startswith("layer") and b.count(".") == 1]
    ratios = {n: [] for n in names}
    for x, _, _ in data.batches(250, "imagenet"):
        for n, (r, _) in _independent_ratios(m, x, names).items():
            ratios[n].append(r)
    for n in names:
        got = df[(df["block"] == n) & (df["metric"] == "residual_ratio")]["value"].item()
        assert got == pytest.approx(float(torch.cat(ratios[n]).mean()), rel=1e-4), n


def test_metric_groups_compute_the_same_numbers_alone(data, tmp_path):
    m = _model("cifar_resnet20")
    full = I.identity_profile(m, data, "m", batch_size=40, progress=False, n_boot=20)
    for groups, metrics in ((("cka",), {"cka"}), (("norms",), {"residual_ratio", "relative_change", "cosine"}),
                            (("response_std",), {"response_std"})):
        part = I.identity_profile(m, data, "m", batch_size=40, progress=False, n_boot=20, metrics=groups)
        assert set(part.metric) == metrics
        ref = full[full.metric.isin(metrics)].reset_index(drop=True)
        pd.testing.assert_frame_equal(part.reset_index(drop=True), ref)
    with pytest.raises(ValueError, match="non-empty subset of norms, cka, response_std; got \\['ckaa'\\]"):
        I.identity_profile(m, data, "m", progress=False, metrics=("ckaa",))
    from resprobe.report.identity import identity_study
    df = identity_study([("m", m, {"model": "cifar_resnet20"})], data, 40, metrics=("cka",), n_boot=20,
                        out=tmp_path, progress=False)
    assert set(df.metric) == {"cka"} and (tmp_path / "report.html").is_file()
