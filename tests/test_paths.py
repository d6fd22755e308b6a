"""Path lengths: binomial distribution by DP, routed gradients that sum to the true gradient, outputs."""
from __future__ import annotations

import itertools
import json
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resprobe.anatomy import anatomy, hook_count
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.engine import RunSpec
from resprobe.errors import UsageError
from resprobe.probes import paths as P
from resprobe.probes.paths import RoutedBackward, effective_range, path_length_distribution, unraveled_graph
from resprobe.report import save
from resprobe.study import Subject

from conftest import role, randomize_bn


@pytest.mark.parametrize("spec,n", [("cifar_resnet56", 27), ("cifar_resnet110", 54), ("cifar_resnet20_b", 9),
                                    ("mlp(depth=66,width=4)", 66)])
def test_distribution_is_binomial(spec, n):
    view = anatomy(build_model(spec))
    dist = path_length_distribution(unraveled_graph(view))
    assert dist == [math.comb(n, k) for k in range(n + 1)]  # exact integers, also beyond int64 (2^66)


def test_plain_blocks_have_one_path():
    view = anatomy(build_model("cifar_plain20"))
    assert path_length_distribution(unraveled_graph(view)) == [0] * 9 + [1]


def test_graph_structure_and_export(tmp_path):
    g = unraveled_graph(anatomy(build_model("cifar_resnet20_b")))
    assert nx.is_directed_acyclic_graph(g)
    assert sum(1 for *_, d in g.edges(data=True) if d["kind"] == "shortcut") == 9
    kinds = {d["shortcut"] for *_, d in g.edges(data=True) if d["kind"] == "shortcut"}
    assert kinds == {"identity", "projection"}
    nx.write_graphml(g, tmp_path / "g.graphml")
    assert nx.read_graphml(tmp_path / "g.graphml").number_of_edges() == g.number_of_edges()


def _small(spec="cifar_resnet14(width=4)"):
    torch.manual_seed(0)
    m = randomize_bn(build_model(spec, num_classes=4)).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("spec", ["cifar_resnet14(width=4)", "cifar_resnet14(width=4,shortcut=B)",
                                  "cifar_preresnet14(width=4)"])
def test_routed_gradients_sum_to_true_gradient(spec):
    """All 2^n routings (n = 6, with downsampling blocks) add up to the ordinary gradient, which is
    checked independently against autograd through the model's own forward."""
    m = _small(spec)
    view = anatomy(m, (3, 16, 16))
    n = len(view)
    assert any(b.downsample for b in view)
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 3])
    rb = RoutedBackward(view, x, y, to_image=True)
    # independent: autograd through model(x), gradient at the first block's input via a tensor hook
    store = {}
    h = m.layer1[0].register_forward_pre_hook(lambda mod, a: store.setdefault("x", a[0].requires_grad_(True)))
    try:
        xi = x.clone()
        with torch.enable_grad():
            loss = F.cross_entropy(m(xi), y, reduction="sum")
            (ref,) = torch.autograd.grad(loss, store["x"])
    finally:
        h.remove()
    assert torch.allclose(rb.true_grad(), ref, atol=1e-12, rtol=1e-10)
    total = torch.zeros_like(ref)
    total_img = torch.zeros_like(x)
    for bits in itertools.product([False, True], repeat=n):
        g, gi = rb.grad(bits)
        total += g
        total_img += gi
    assert torch.allclose(total, ref, atol=1e-12, rtol=1e-9)
    # a single routing is not the whole gradient: the check can fail
    assert not torch.allclose(rb.grad([True] * n)[0], ref, atol=1e-6)
    assert hook_count(m) == 0


def test_effective_range():
    assert effective_range([0, 1, 8, 1, 0], 0.8) == (2, 2)
    assert effective_range([1, 1, 1, 1], 0.5) == (0, 1)
    assert effective_range([0, 5, 5, 0], 1.0) == (1, 2)


def test_weighted_length():
    assert P.weighted_length([0, 1, 0]) == 1
    assert P.weighted_length([1, 0, 0, 1]) == 1.5


def test_gradient_per_path_length_outputs(tmp_path):
    data = load_dataset("synthetic(n=24,classes=4,size=16)", "test")
    m = _small().float()
    spec = RunSpec(batch_size=12, seed=1, n_boot=200, progress=False)
    r = P.run([Subject("m", m, "none", {"model": "cifar_resnet14"})], data, spec, P.PathsOptions(samples=4))
    df = r.table
    assert list(df["k"]) == list(range(7)) and list(df["n_paths"]) == [math.comb(6, k) for k in range(7)]
    assert np.allclose(df["total_grad"], df["grad_per_path"] * df["n_paths"])
    assert (df["samples"] == [1, 4, 4, 4, 4, 4, 1]).all()  # C(6,k) <= samples: enumerated
    assert ((df["ci_low"] <= df["grad_per_path"]) & (df["grad_per_path"] <= df["ci_high"])).all()
    r2 = P.run([Subject("m", m, "none")], data, spec.replace(batch_size=24), P.PathsOptions(samples=4))
    pd.testing.assert_frame_equal(df, r2.table, rtol=1e-5)  # batch size only regroups images
    with pytest.raises(UsageError, match="out of range"):
        P.run([Subject("m", m, "none")], data, spec, P.PathsOptions(ks=(9,)))
    s = r.summary["m"]
    assert s["range"][0] <= s["peak_k"] <= s["range"][1] and 0 < s["fraction_of_paths"] <= 1
    assert set(s["ranges"]) == {"0.8", "0.9", "0.95"}
    w = s["weighted_length"]
    assert w["ci_low"] <= w["value"] <= w["ci_high"]
    assert w["value"] == pytest.approx(P.weighted_length(df["total_grad"].to_numpy()))
    v = r.verdicts[0]
    assert v.verdict == "not applicable" and v.threshold == P.SHORT_PATHS.value  # random init: not judged
    save(r, tmp_path)
    meta = json.loads((tmp_path / "paths.json").read_text())
    for f in meta["files"]:
        assert (tmp_path / f).stat().st_size > 0
    assert list(pd.read_csv(tmp_path / "paths.csv")["k"]) == list(range(7))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        P.PathsOptions(share=1.5)


def test_short_paths_verdict_boundaries():
    def summary(value, lo, hi, n=10, lab="m"):
        return {lab: dict(typical_length=n / 2, weighted_length=dict(value=value, ci_low=lo, ci_high=hi), ranges={},
                          peak_k=2)}
    roles = {"m": role("m")}
    assert P.short_paths_verdicts(summary(2.0, 1.8, 2.2), roles, 100)[0].verdict == "supported"      # 0.36..0.44
    assert P.short_paths_verdicts(summary(3.75, 3.5, 4.0), roles, 100)[0].verdict == "inconclusive"  # straddles 0.75
    assert P.short_paths_verdicts(summary(4.5, 4.2, 4.8), roles, 100)[0].verdict == "not supported"
    assert P.short_paths_verdicts({"m": dict(note="x")}, roles, 1)[0].verdict == "not applicable"
    assert P.short_paths_verdicts(summary(2.0, 1.8, 2.2), {"m": role("m", error=0.9)}, 1)[0].verdict == "not applicable"
    # every seed enters (the audit: seed 0 only)
    s3 = {**summary(2.0, 1.8, 2.2, lab="m/s0"), **summary(2.2, 2.0, 2.4, lab="m/s1"), **summary(2.1, 1.9, 2.3, lab="m/s2")}
    v = P.short_paths_verdicts(s3, {f"m/s{i}": role("m", i) for i in range(3)}, 100)[0]
    assert v.n_seeds == 3 and len(v.per_seed) == 3 and v.verdict == "supported"
