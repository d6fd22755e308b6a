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
from resprobe.probes.paths import (RoutedBackward, effective_range, gradient_per_path_length,
                                   path_length_distribution, unraveled_graph)
from resprobe.report.paths import paths_study

from conftest import randomize_bn


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


def test_gradient_per_path_length_outputs(tmp_path):
    data = load_dataset("synthetic(n=24,classes=4,size=16)", "test")
    m = _small().float()
    df = gradient_per_path_length(m, data, "m", samples=4, seed=1, batch_size=12, progress=False)
    assert list(df["k"]) == list(range(7)) and list(df["n_paths"]) == [math.comb(6, k) for k in range(7)]
    assert np.allclose(df["total_grad"], df["grad_per_path"] * df["n_paths"])
    assert (df["samples"] == [1, 4, 4, 4, 4, 4, 1]).all()  # C(6,k) <= samples: enumerated
    df2 = gradient_per_path_length(m, data, "m", samples=4, seed=1, batch_size=24, progress=False)
    pd.testing.assert_frame_equal(df, df2, rtol=1e-5)  # batch size only regroups images
    with pytest.raises(ValueError, match="out of range"):
        gradient_per_path_length(m, data, "m", ks=[9], progress=False)
    models = [("m", m, {"model": "cifar_resnet14"})]
    paths_study(models, data, samples=3, batch_size=24, out=tmp_path, progress=False)
    meta = json.loads((tmp_path / "paths.json").read_text())
    s = meta["summary"]["m"]
    assert s["range"][0] <= s["peak_k"] <= s["range"][1] and 0 < s["fraction_of_paths"] <= 1
    for f in meta["files"]:
        assert (tmp_path / f).stat().st_size > 0
    assert list(pd.read_csv(tmp_path / "paths.csv")["k"]) == list(range(7))
