"""Every experiments/ script runs in --fast mode (as CI does), writes its files and a summary whose
numbers agree with an independent computation or with the CSV the study wrote."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from resprobe.verdict import OUTCOMES

from conftest import ROOT, TEST_ARCHIVE, need_shared

pytestmark = pytest.mark.slow
ZOO_R20, ZOO_P20 = ROOT / "zoo" / "cifar_resnet20" / "model.pt", ROOT / "zoo" / "cifar_plain20" / "model.pt"


def run(script: str, out, *extra) -> dict:
    cmd = [sys.executable, str(ROOT / "experiments" / script), "--fast", "--no-progress", "--out", str(out), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fast"] is True and summary["headline"], summary
    assert all(line in r.stdout for line in summary["headline"])
    assert summary["verdicts"] and all(v["criterion"] and v["scope"] for v in summary["verdicts"])
    return summary


def test_veit_fig3_baseline_is_an_independent_evaluation(tmp_path):
    need_shared(TEST_ARCHIVE)
    s = run("veit_fig3_single_lesions.py", tmp_path)
    from resprobe.engine import RunSpec, evaluate
    from resprobe.loading import load_data, load_model
    data = load_data(f"imagefolder:{TEST_ARCHIVE}", "test", limit=500)
    model, _ = load_model("cifar_resnet20", str(ZOO_R20))
    ref = evaluate(model, data, RunSpec(batch_size=100, progress=False), "imagenet")["error"]
    assert s["numbers"]["resnet20"]["baseline_error"] == ref
    df = pd.read_csv(tmp_path / "lesion.csv")
    single = df[(df.model == "plain20") & (df["mode"] == "single")]
    deletable = single[single.error.notna() & ~single.deleted.isin(["layer2.0", "layer3.0"])]
    assert len(single) == 9 and s["numbers"]["plain20"]["median_single_deletion_error"] == deletable.error.median()
    assert (tmp_path / "lesion_single.png").is_file()
    # an equal-recipe pair (seed 0 of the zoo twins): the contrast verdict, for this network pair only; the
    # shared checkpoints (no recorded recipe) are judged alone, each against the absolute criterion
    v = next(v for v in s["verdicts"] if v["key"] == "lesion-contrast")
    assert v["scope"].startswith("this network") and "plain − residual" in v["statistic_name"]
    assert v["verdict"] != "not applicable", v["reason"]
    alone = [v for v in s["verdicts"] if v["key"] == "lesion-single"]  # --fast: the zoo pair only
    assert len(alone) == 1 and alone[0]["n_seeds"] == 1 and alone[0]["verdict"] != "not applicable"


def test_veit_fig5_and_fig6(tmp_path):
    need_shared(TEST_ARCHIVE)
    s = run("veit_fig5_random_k_reorder.py", tmp_path / "f5")
    df = pd.read_csv(tmp_path / "f5" / "lesion.csv")
    rk = df[df["mode"] == "random-k"].groupby("k").error.median()
    assert {int(k): v for k, v in s["numbers"]["resnet20"]["random_k_median_error"].items()} == rk.to_dict()
    assert set(rk.index) == {1, 2, 3, 4, 5} and df[df["mode"] == "reorder"].k.nunique() >= 3  # swaps may cancel
    assert any(v["key"] == "lesion-random-k" and "rises smoothly" in v["conjecture"] for v in s["verdicts"])
    s = run("veit_fig6_paths.py", tmp_path / "f6")
    paths = pd.read_csv(tmp_path / "f6" / "paths.csv")
    assert paths.n_paths.sum() == 2 ** 9  # every path length of a 9-unit net, binomial counts
    lo, hi = s["numbers"]["resnet20"]["range"]
    assert 0 <= lo <= hi <= 9


def test_he_fig7(tmp_path):
    need_shared(TEST_ARCHIVE)
    s = run("he_fig7_response_std.py", tmp_path)
    df = pd.read_csv(tmp_path / "identity.csv")
    over = pd.DataFrame(s["numbers"]["overview"])
    for m in ("resnet20", "plain20"):
        std = df[(df.model == m) & (df.metric == "response_std")].value
        got = over[(over.model == m) & (over.metric == "response_std")]["median"].item()
        assert len(std) == 19 and got == pytest.approx(std.median())
    assert not ((df.model == "plain20") & (df.metric == "residual_ratio")).any()  # a plain net has no shortcut
    assert s["verdicts"][0]["n_seeds"] == 1


def test_balduzzi_synthetic(tmp_path):
    s = run("balduzzi_fig1_2.py", tmp_path)
    df = pd.read_csv(tmp_path / "gradcorr.csv")
    agg = df[(df.seed == "all") & (df.metric == "lag1")].set_index(["kind", "depth"]).value
    assert agg[("ff-bn", 24)] < 0.2 < agg[("res-bn", 24)]  # shattering: BN feedforward ≈ white, ResNet not
    assert "lag1" in s["numbers"]["fits"] and (tmp_path / "gradcorr_traces.png").is_file()


def test_amplifier(tmp_path):
    need_shared(TEST_ARCHIVE)
    s = run("amplifier.py", tmp_path)
    df = pd.read_csv(tmp_path / "amplify.csv")
    k = df[(df.model == "resnet20") & (df.metric == "kappa")].value
    assert s["numbers"]["models"]["resnet20"]["kappa"] == pytest.approx(k.median())
    assert s["verdicts"][0]["verdict"] in OUTCOMES and s["verdicts"][0]["key"] == "amplify"


def test_degradation_fast(tmp_path):
    run_out = tmp_path / "deg"
    cmd = [sys.executable, str(ROOT / "experiments" / "degradation.py"), "--fast", "--out", str(run_out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    j = json.loads((run_out / "degradation.json").read_text())
    assert j["provenance"]["run"]["train_status"] == {f"{m}/seed0": "done" for m in
                                                      ("cifar_plain8", "cifar_plain14", "cifar_resnet8", "cifar_resnet14")}
    for m in ("cifar_plain8", "cifar_resnet14"):
        metrics = pd.read_csv(run_out / m / "metrics.csv")
        assert len(metrics) == 4
        sd = torch.load(run_out / m / "model.pt", weights_only=True)
        assert any(k.endswith("conv1.weight") for k in sd)
    assert f"verdict: {j['verdicts'][0]['verdict']}" in r.stdout
    # a second run resumes: nothing is retrained, the curves are unchanged
    before = pd.read_csv(run_out / "cifar_plain8" / "metrics.csv")
    r2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    pd.testing.assert_frame_equal(before, pd.read_csv(run_out / "cifar_plain8" / "metrics.csv"))


def test_missing_default_networks_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RESPROBE_SHARED", str(tmp_path / "nowhere"))
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "veit_fig6_paths.py"), "--data", "synthetic(n=32)",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "missing default networks" in r.stderr and "--model SPEC --weights PATH" in r.stderr


def test_architectures_fast(tmp_path):
    """The zoo ViT and ConvNeXt beside ResNet-20: every study writes its folder, the intact errors equal an
    independent evaluation, and a ViT block lesion deletes both of the block's units (its own store)."""
    need_shared(TEST_ARCHIVE)
    cmd = [sys.executable, str(ROOT / "experiments" / "architectures.py"), "--fast", "--no-progress", "--out",
           str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    for sub in ("lesion", "lesion_blocks", "identity", "paths"):
        assert json.loads((tmp_path / sub / "summary.json").read_text())["fast"] is True
    from resprobe.engine import RunSpec, evaluate
    from resprobe.loading import load_data, load_model
    data = load_data(f"imagefolder:{TEST_ARCHIVE}", "test", limit=300)
    df = pd.read_csv(tmp_path / "lesion" / "lesion.csv")
    spec = "timm:vit_tiny_patch16_224(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2)"
    model, _ = load_model(spec, str(ROOT / "zoo" / "cifar_vit6" / "model.pt"), num_classes=10)
    ref = evaluate(model, data, RunSpec(batch_size=100, progress=False), "imagenet")["error"]
    intact = df[(df.model == "vit") & (df["mode"] == "baseline")]
    assert len(intact) == 1 and float(intact["error"].iloc[0]) == pytest.approx(ref, abs=1e-9)
    blocks = pd.read_csv(tmp_path / "lesion_blocks" / "lesion.csv")
    one = blocks[blocks["mode"] == "single"]
    assert sorted(one["deleted"]) == [f"blocks.{i}" for i in range(6)]  # a block: its attention and MLP units
    units = df[(df.model == "vit") & (df["mode"] == "single")]
    assert len(units) == 12 and {d.rsplit(".", 1)[0] for d in units["deleted"]} == {f"blocks.{i}" for i in range(6)}
