"""Lesions: the engine equals naive surgery image for image; configurations; resume; outputs."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import kendalltau

import resprobe.probes.lesion as L
from resprobe.anatomy import AnatomyError, anatomy
from resprobe.cli import main
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.report.lesion import lesion_study

from conftest import RESNET20, TEST_ARCHIVE, need_shared, randomize_bn


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic(n=96,classes=4)", "test")


def _model(spec, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(spec, num_classes=4), seed).eval()


@pytest.mark.parametrize("spec,mode,k", [
    ("cifar_resnet20", "single", None), ("cifar_resnet20", "random-k", "1,3,9"), ("cifar_resnet20", "reorder", "1:4"),
    ("cifar_resnet20_b", "random-k", "2,5"), ("cifar_preresnet20", "reorder", "3"), ("cifar_plain20", "single", None),
    ("cifar_plain20", "reorder", "2"), ("torchvision:resnet18", "random-k", "1,4"),
])
def test_engine_equals_naive_surgery(data, spec, mode, k):
    if spec.startswith("torchvision"):
        pytest.importorskip("torchvision")
    m = _model(spec)
    view = anatomy(m, data.input_shape)
    configs = [c for c in L.make_configs(view, mode, k=k, samples=3, seed=1) if c.runnable]
    ours = L.engine_predictions(view, data, configs, batch_size=40)
    for c, p in zip(configs, ours):
        ref = L.naive_predictions(m, view.names, data, c, batch_size=40)
        assert np.array_equal(p, ref), c
    # and the edits act: every modified configuration changes the logits
    x = next(data.batches(40))[0]
    with torch.no_grad():
        logits = {ci: t.clone() for ci, t in L._engine_logits(view, x, configs, range(len(configs)))}
    assert all(not torch.allclose(logits[0], logits[i]) for i in range(1, len(configs)))


def test_prefix_cache_runs_each_block_the_minimum_number_of_times(data, monkeypatch):
    m = _model("cifar_resnet20")
    view = anatomy(m, data.input_shape)
    n = len(view)
    calls = {"blocks": 0, "heads": 0}
    run_block, head = view.run_block, view.head

    def counting_block(*a, **kw):
        calls["blocks"] += 1
        return run_block(*a, **kw)

    def counting_head(h):
        calls["heads"] += 1
        return head(h)

    monkeypatch.setattr(view, "run_block", counting_block)
    monkeypatch.setattr(view, "head", counting_head)
    configs = L.make_configs(view, "single")
    L.lesion_counts(view, data, configs, batch_size=len(data))  # one batch
    # clean pass: n blocks; deleting block i reruns blocks i..n-1: sum (n - i) = n(n+1)/2
    assert calls["blocks"] == n + n * (n + 1) // 2
    assert calls["heads"] == n + 1


def test_configs_single_set_randomk_reorder(data):
    view = anatomy(_model("cifar_resnet20"), data.input_shape)
    single = L.make_configs(view, "single")
    assert single[0].mode == "baseline" and [c.deleted for c in single[1:]] == [(i,) for i in range(9)]
    s = L.make_configs(view, "set", blocks=["layer3.1", "layer1.2"])
    assert s[1].deleted == (2, 7) and s[1].k == 2
    rk = L.make_configs(view, "random-k", k="2:3", samples=5, seed=3)
    assert rk == L.make_configs(view, "random-k", k="2:3", samples=5, seed=3)  # seeded
    assert rk != L.make_configs(view, "random-k", k="2:3", samples=5, seed=4)
    for c in rk[1:]:
        assert len(c.deleted) == c.k == len(set(c.deleted)) and c.k in (2, 3)
    assert len({c.deleted for c in rk[1:]}) == 10
    allk = L.make_configs(view, "random-k", k="9", samples=5)  # C(9,9) = 1 <= samples: enumerated
    assert [c.deleted for c in allk[1:]] == [tuple(range(9))]
    ex = L.make_configs(view, "random-k", k="1", samples=50, exclude_downsampling=True)
    assert {c.deleted[0] for c in ex[1:]} == {0, 1, 2, 4, 5, 7, 8}
    ro = L.make_configs(view, "reorder", k="1:5", samples=6, seed=0)
    shapes = [(b.in_shape, b.out_shape) for b in view]
    for c in ro[1:]:
        assert sorted(c.order) == list(range(9)) and c.order != tuple(range(9))
        assert all(shapes[i] == shapes[j] for i, j in enumerate(c.order))  # only shape-compatible swaps
        assert not any(view[j].downsample for i, j in enumerate(c.order) if i != j)
        assert math.isclose(c.kendall_tau, kendalltau(range(9), c.order).statistic)


def test_bad_inputs_are_clear(data):
    view = anatomy(_model("cifar_resnet20"), data.input_shape)
    with pytest.raises(AnatomyError, match="valid block names: layer1.0, layer1.1"):
        L.make_configs(view, "set", blocks=["layer1.7"])
    with pytest.raises(ValueError, match="must lie in 0..9"):
        L.make_configs(view, "random-k", k="1:12")
    with pytest.raises(ValueError, match="unknown lesion mode"):
        L.make_configs(view, "shuffle")
    with pytest.raises(ValueError, match="needs --blocks"):
        L.make_configs(view, "set")
    plain = anatomy(_model("cifar_plain20"), data.input_shape)
    with pytest.raises(AnatomyError, match="layer2.0"):
        L.make_configs(plain, "set", blocks=["layer2.0"])


def test_plain_twin_reports_undeletable_blocks(data):
    df = L.run_lesion(_model("cifar_plain20"), data, "single", "plain", progress=False)
    bad = df[df["note"].astype(str).str.startswith("not deletable")]
    assert sorted(bad["deleted"]) == ["layer2.0", "layer3.0"] and bad["error"].isna().all()
    assert df[df["note"] == ""]["error"].notna().all()


def test_rows_columns_and_counts(data):
    df = L.run_lesion(_model("cifar_resnet20"), data, "random-k", "r20", k="1,2", samples=2, progress=False)
    assert list(df.columns) == L.COLUMNS
    assert (df["n_images"] == len(data)).all()
    assert np.allclose(df["error"], df["n_wrong"] / df["n_images"])
    assert ((df["ci_low"] <= df["error"]) & (df["error"] <= df["ci_high"])).all()
    assert df["top5_error"].isna().all()  # 4 classes: no top-5
    assert list(df["mode"]) == ["baseline", "random-k", "random-k", "random-k", "random-k"]


def test_same_seed_same_csv(data, tmp_path):
    for d in ("a", "b"):
        L.run_lesion(_model("cifar_resnet20"), data, "reorder", "r20", k="1:3", samples=3, seed=7,
                     out=tmp_path / d, progress=False)
    assert (tmp_path / "a" / "lesion.csv").read_bytes() == (tmp_path / "b" / "lesion.csv").read_bytes()


def test_interrupt_and_resume(data, tmp_path, monkeypatch):
    model = _model("cifar_resnet20")
    kw = dict(mode="random-k", model_label="r20", k="1:4", samples=3, seed=2, progress=False, chunk=4)
    full = L.run_lesion(model, data, out=tmp_path / "full", **kw)
    orig = L.lesion_counts
    seen = {"calls": 0, "configs": 0}

    def flaky(view, d, configs, *a, **k):
        seen["calls"] += 1
        seen["configs"] += len(configs)
        if seen["calls"] == 3:
            raise KeyboardInterrupt
        return orig(view, d, configs, *a, **k)

    monkeypatch.setattr(L, "lesion_counts", flaky)
    with pytest.raises(KeyboardInterrupt):
        L.run_lesion(model, data, out=tmp_path / "cut", **kw)
    partial = pd.read_csv(tmp_path / "cut" / "lesion.csv")
    assert len(partial) == 8  # two chunks of 4 written before the interruption
    seen.update(calls=0, configs=0)
    resumed = L.run_lesion(model, data, out=tmp_path / "cut", **kw)
    assert seen["configs"] == len(full) - 8  # finished rows are not recomputed
    pd.testing.assert_frame_equal(resumed, full)
    # a rerun with other settings into the same folder is refused, not mixed
    with pytest.raises(ValueError, match="other settings"):
        L.run_lesion(model, data, out=tmp_path / "cut", **dict(kw, samples=5))


def test_study_writes_csv_json_plots(data, tmp_path):
    models = [("res", _model("cifar_resnet20"), {"model": "cifar_resnet20"}),
              ("plain", _model("cifar_plain20", 1), {"model": "cifar_plain20"})]
    lesion_study(models, data, "single", out=tmp_path, progress=False)
    df = lesion_study(models, data, "random-k", k="1,2", samples=2, out=tmp_path, progress=False)
    assert set(df["mode"]) == {"baseline", "random-k"}
    on_disk = pd.read_csv(tmp_path / "lesion.csv")
    assert set(on_disk["mode"]) == {"baseline", "single", "random-k"} and set(on_disk["model"]) == {"res", "plain"}
    meta = json.loads((tmp_path / "lesion.json").read_text())
    prov = meta["provenance"]
    assert {"models", "data", "seed", "versions", "wall_time_s", "normalize", "device"} <= set(prov)
    assert prov["data"]["n_images"] == len(data)
    assert meta["summary"]["res"]["downsampling_blocks"].keys() == {"layer2.0", "layer3.0"}
    for name in ("lesion_single", "lesion_random_k"):
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        with Image.open(tmp_path / f"{name}.png") as im:
            im.load()
            assert im.size[0] > 300


def test_cli_lesion_bad_block_and_mismatched_weights(capsys, tmp_path):
    code = main(["lesion", "--model", "cifar_resnet8", "--data", "synthetic(n=16)", "--mode", "set",
                 "--blocks", "layer1.0,layer4.0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown block 'layer4.0'" in err and "layer3.0" in err
    code = main(["lesion", "--model", "cifar_resnet8", "--model", "cifar_plain8", "--weights", "x.pt",
                 "--data", "synthetic(n=16)", "--out", str(tmp_path)])
    assert code == 2 and "one --weights per --model" in capsys.readouterr().err


@pytest.mark.slow
def test_shared_resnet20_full_test_set_engine_equals_naive():
    """Every single-deletion n_wrong of the engine equals the naive evaluation over all 10,000 images."""
    need_shared(RESNET20, TEST_ARCHIVE)
    from resprobe.api import load_data, load_model
    data = load_data(f"imagefolder:{TEST_ARCHIVE}", "test")
    model, _ = load_model("cifar_resnet20", str(RESNET20))
    view = anatomy(model, data.input_shape)
    configs = L.make_configs(view, "single")
    ours = L.engine_predictions(view, data, configs, normalize="imagenet")
    labels = data.labels.numpy()
    assert int((ours[0] != labels).sum()) == 1897
    for c, p in zip(configs, ours):
        ref = L.naive_predictions(model, view.names, data, c, normalize="imagenet")
        assert np.array_equal(p, ref), c
    errs = {view.names[c.deleted[0]]: float((p != labels).mean()) for c, p in zip(configs[1:], ours[1:])}
    # the downsampling blocks stand out: the two largest single-deletion errors
    assert set(sorted(errs, key=errs.get)[-2:]) == {"layer2.0", "layer3.0"}
