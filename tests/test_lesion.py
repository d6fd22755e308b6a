"""Lesions: the engine equals naive surgery image for image; configurations; resume; outputs; verdicts."""
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
from resprobe.engine import RunSpec
from resprobe.errors import OutputError, UsageError
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.probes.lesion_store import LesionStore
from resprobe.report import save
from resprobe.study import Subject

from conftest import RESNET20, TEST_ARCHIVE, need_shared, randomize_bn, role
from oracle import engine_predictions, naive_predictions

SPEC = RunSpec(batch_size=40, progress=False)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic(n=96,classes=4)", "test")


def _model(spec, seed=0, classes=4):
    torch.manual_seed(seed)
    return randomize_bn(build_model(spec, num_classes=classes), seed).eval()


def _plan(mode, **kw):
    return L.LesionPlan(mode, **kw)


@pytest.mark.parametrize("spec,mode,ks", [
    ("cifar_resnet20", "single", None), ("cifar_resnet20", "random-k", (1, 3, 9)), ("cifar_resnet20", "reorder", (1, 2, 3, 4)),
    ("cifar_resnet20_b", "random-k", (2, 5)), ("cifar_preresnet20", "reorder", (3,)), ("cifar_plain20", "single", None),
    ("cifar_plain20", "reorder", (2,)), ("torchvision:resnet18", "random-k", (1, 4)),
    ("timm:vit_tiny_patch16_224(img_size=32, patch_size=8, depth=3)", "random-k", (1, 3)),
    ("timm:convnext_atto(patch_size=2)", "single", None),
])
def test_engine_equals_naive_surgery(data, spec, mode, ks):
    if ":" in spec:
        pytest.importorskip(spec.split(":")[0])
    m = _model(spec)
    view = anatomy(m, data.input_shape)
    configs = [c for c in L.make_configs(view, _plan(mode, ks=ks, samples=3), seed=1) if c.runnable]
    ours = engine_predictions(view, data, configs, batch_size=40)
    plain = "plain" in spec
    for c, p in zip(configs, ours):
        ref = naive_predictions(m, view.names, data, c, batch_size=40, plain=plain)
        assert np.array_equal(p, ref), c
    # and the edits act: every modified configuration changes the logits
    x = next(data.batches(40))[0]
    with torch.no_grad():
        logits = {ci: t.clone() for ci, t in L.stream_logits(view, x, configs, range(len(configs)))}
    assert all(not torch.allclose(logits[0], logits[i]) for i in range(1, len(configs)))


def test_prefix_cache_runs_each_unit_the_minimum_number_of_times(data, monkeypatch):
    m = _model("cifar_resnet20")
    view = anatomy(m, data.input_shape)
    n = len(view)
    calls = {"units": 0, "heads": 0}
    run_unit, head = view.run_unit, view.head

    def counting_unit(*a, **kw):
        calls["units"] += 1
        return run_unit(*a, **kw)

    def counting_head(h):
        calls["heads"] += 1
        return head(h)

    monkeypatch.setattr(view, "run_unit", counting_unit)
    monkeypatch.setattr(view, "head", counting_head)
    configs = L.make_configs(view, _plan("single"))
    L.sweep(view, data, configs, RunSpec(batch_size=len(data), progress=False), "none")  # one batch
    # the intact pass (n units, once: the baseline logits and the prefix cache); deleting unit i reruns i..n-1
    assert calls["units"] == n + n * (n + 1) // 2
    assert calls["heads"] == 1 + n


def test_configs_single_set_randomk_reorder(data):
    view = anatomy(_model("cifar_resnet20"), data.input_shape)
    single = L.make_configs(view, _plan("single"))
    assert single[0].mode == "baseline" and [c.deleted for c in single[1:]] == [(i,) for i in range(9)]
    s = L.make_configs(view, _plan("set", units=("layer3.1", "layer1.2")))
    assert s[1].deleted == (2, 7) and s[1].k == 2
    rk = L.make_configs(view, _plan("random-k", ks=(2, 3), samples=5), seed=3)
    assert rk == L.make_configs(view, _plan("random-k", ks=(2, 3), samples=5), seed=3)  # seeded
    assert rk != L.make_configs(view, _plan("random-k", ks=(2, 3), samples=5), seed=4)
    for c in rk[1:]:
        assert len(c.deleted) == c.k == len(set(c.deleted)) and c.k in (2, 3)
    assert len({c.deleted for c in rk[1:]}) == 10
    allk = L.make_configs(view, _plan("random-k", ks=(9,), samples=5))  # C(9,9) = 1 <= samples: enumerated
    assert [c.deleted for c in allk[1:]] == [tuple(range(9))]
    ex = L.make_configs(view, _plan("random-k", ks=(1,), samples=50, exclude_downsampling=True))
    assert {c.deleted[0] for c in ex[1:]} == {0, 1, 2, 4, 5, 7, 8}
    ro = L.make_configs(view, _plan("reorder", ks=(1, 2, 3, 4, 5), samples=6), seed=0)
    shapes = [(b.in_shape, b.out_shape) for b in view]
    for c in ro[1:]:
        assert sorted(c.order) == list(range(9)) and c.order != tuple(range(9))
        assert all(shapes[i] == shapes[j] for i, j in enumerate(c.order))  # only shape-compatible swaps
        assert not any(view[j].downsample for i, j in enumerate(c.order) if i != j)
        assert math.isclose(c.kendall_tau, kendalltau(range(9), c.order).statistic)


def test_block_granularity_deletes_whole_transformer_blocks(data):
    pytest.importorskip("timm")
    view = anatomy(_model("timm:vit_tiny_patch16_224(img_size=32, patch_size=8, depth=3)"), data.input_shape)
    cfg = L.make_configs(view, _plan("single", granularity="block"))
    assert [c.label for c in cfg[1:]] == ["blocks.0", "blocks.1", "blocks.2"]
    assert [c.deleted for c in cfg[1:]] == [(0, 1), (2, 3), (4, 5)]


def test_bad_inputs_are_clear(data):
    view = anatomy(_model("cifar_resnet20"), data.input_shape)
    with pytest.raises(AnatomyError, match="valid names: layer1.0, layer1.1"):
        L.make_configs(view, _plan("set", units=("layer1.7",)))
    with pytest.raises(UsageError, match="must lie in 1..9"):
        L.make_configs(view, _plan("random-k", ks=(1, 12)))
    with pytest.raises(ValueError):
        _plan("shuffle")
    with pytest.raises(UsageError, match="needs the units"):
        _plan("set")
    plain = anatomy(_model("cifar_plain20"), data.input_shape)
    with pytest.raises(AnatomyError, match="layer2.0"):
        L.make_configs(plain, _plan("set", units=("layer2.0",)))


def _subject(label, spec, seed=0):
    return Subject(label, _model(spec, seed), "none", {"model": spec})


def test_plain_twin_reports_undeletable_units(data):
    df = L.run([_subject("plain", "cifar_plain20")], data, SPEC, _plan("single")).table
    bad = df[df["note"].astype(str).str.startswith("not deletable")]
    assert sorted(bad["deleted"]) == ["layer2.0", "layer3.0"] and bad["error"].isna().all()
    assert df[df["note"] == ""]["error"].notna().all()


def test_rows_columns_counts_and_mcnemar(data):
    r = L.run([_subject("r20", "cifar_resnet20")], data, SPEC, _plan("random-k", ks=(1, 2), samples=2))
    df = r.table
    assert list(df.columns) == L.COLUMNS
    assert (df["n_images"] == len(data)).all()
    assert np.allclose(df["error"], df["n_wrong"] / df["n_images"])
    assert ((df["ci_low"] <= df["error"]) & (df["error"] <= df["ci_high"])).all()
    assert df["top5_error"].isna().all()  # 4 classes: no top-5
    assert list(df["mode"]) == ["baseline", "random-k", "random-k", "random-k", "random-k"]
    base = df.iloc[0]
    # discordant pairs against the intact network: wrong(config) - wrong(intact) = broken - fixed
    assert ((df["n_wrong"] - base["n_wrong"]) == (df["n_broken"] - df["n_fixed"])).all()
    bits = r.detail.bits["r20"]
    for _, row in df.iterrows():
        key = f"{row['mode']}|{row['deleted']}|{row['order']}"
        assert int(np.unpackbits(bits[key], count=len(data)).sum()) == row["n_wrong"]
    from scipy.stats import binomtest
    row = df.iloc[1]
    b, c = int(row["n_broken"]), int(row["n_fixed"])
    assert row["p_mcnemar"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)


def test_same_seed_same_csv(data, tmp_path):
    for d in ("a", "b"):
        r = L.run([_subject("r20", "cifar_resnet20")], data, SPEC.replace(seed=7),
                  _plan("reorder", ks=(1, 2, 3), samples=3), LesionStore(tmp_path / d))
        save(r, tmp_path / d)
    assert (tmp_path / "a" / "lesion.csv").read_bytes() == (tmp_path / "b" / "lesion.csv").read_bytes()


def test_interrupt_and_resume(data, tmp_path, monkeypatch):
    subj = [_subject("r20", "cifar_resnet20")]
    plan = _plan("random-k", ks=(1, 2, 3, 4), samples=3)
    spec = SPEC.replace(seed=2)
    full = L.run(subj, data, spec, plan, LesionStore(tmp_path / "full"), chunk=4).table
    orig = L.sweep
    seen = {"calls": 0, "configs": 0}

    def flaky(view, d, configs, *a, **k):
        seen["calls"] += 1
        seen["configs"] += len(configs)
        if seen["calls"] == 3:
            raise KeyboardInterrupt
        return orig(view, d, configs, *a, **k)

    monkeypatch.setattr(L, "sweep", flaky)
    with pytest.raises(KeyboardInterrupt):
        L.run(subj, data, spec, plan, LesionStore(tmp_path / "cut"), chunk=4)
    assert len(pd.read_csv(tmp_path / "cut" / "lesion.csv")) == 8  # two chunks of 4 written before the interruption
    seen.update(calls=0, configs=0)
    resumed = L.run(subj, data, spec, plan, LesionStore(tmp_path / "cut"), chunk=4)
    assert seen["configs"] == len(full) - 8  # finished rows are not recomputed
    assert resumed.detail.reused["r20"] == 8
    pd.testing.assert_frame_equal(resumed.table, full)
    # a rerun with other settings into the same folder is refused, naming what differs
    with pytest.raises(OutputError, match="samples: 3 then, 5 now"):
        L.run(subj, data, spec, _plan("random-k", ks=(1, 2, 3, 4), samples=5), LesionStore(tmp_path / "cut"))
    # ... even when the settings file is gone: the run key travels in the rows
    (tmp_path / "cut" / "lesion.runs.json").unlink()
    with pytest.raises(OutputError, match="settings file"):
        L.run(subj, data, spec.replace(seed=3), plan, LesionStore(tmp_path / "cut"))


def test_study_writes_csv_json_plots_and_keeps_other_modes(data, tmp_path):
    subjects = [_subject("res", "cifar_resnet20"), _subject("plain", "cifar_plain20", 1)]
    store = LesionStore(tmp_path)
    save(L.run(subjects, data, SPEC, _plan("single"), store), tmp_path)
    r = L.run(subjects[:1], data, SPEC, _plan("random-k", ks=(1, 2), samples=2), store)
    save(r, tmp_path)
    assert set(r.table["mode"]) == {"baseline", "random-k"}
    on_disk = pd.read_csv(tmp_path / "lesion.csv")
    assert set(on_disk["mode"]) == {"baseline", "single", "random-k"} and set(on_disk["model"]) == {"res", "plain"}
    assert (on_disk["mode"] == "baseline").sum() == 2  # one intact row per network, shared by the modes
    meta = json.loads((tmp_path / "lesion.json").read_text())
    prov = meta["provenance"]
    assert {"models", "data", "run", "versions"} <= set(prov)
    assert prov["data"]["n_images"] == len(data)
    for name in ("lesion_single", "lesion_random_k"):
        assert (tmp_path / f"{name}.svg").read_text().lstrip().startswith("<?xml")
        with Image.open(tmp_path / f"{name}.png") as im:
            im.load()
            assert im.size[0] > 300
    assert (tmp_path / "report.html").read_text().count("<figure>") == 2


# --- verdicts at their boundaries ----------------------------------------------------------------------

def _table(model: str, base: float, singles: dict, mode="single"):
    rows = [dict(model=model, mode="baseline", deleted="", k=0, error=base, order="", n_images=1000)]
    rows += [dict(model=model, mode=mode, deleted=u, k=1, error=e, order="", n_images=1000) for u, e in singles.items()]
    return L.typed(pd.DataFrame(rows))


def _units(names):
    return [dict(name=n, block=n, kind="residual", downsample=False, stage=0) for n in names]


def _by_key(vs, key):
    out = [v for v in vs if v.key == key]
    assert len(out) == 1, [v.key for v in vs]
    return out[0]


def test_single_deletion_verdict_across_seeds_at_its_margin():
    names = [f"u{i}" for i in range(5)]
    roles, tables, units = {}, [], {}
    # relative increases ~ 0.20 ± 0.01 over three seeds: CI wholly below 0.25 -> supported
    for s, inc in enumerate((0.19, 0.20, 0.21)):
        lab = f"res/s{s}"
        tables.append(_table(lab, 0.1, {n: 0.1 * (1 + inc) for n in names}))
        roles[lab] = role("res", s, True)
        units[lab] = _units(names)
    vs = L.single_deletion_verdicts(pd.concat(tables), roles, units)
    v = _by_key(vs, "lesion-single")
    assert v.verdict == "supported" and v.scope.startswith("across 3 seeds (") and v.ci_high < 0.25
    # the pooled value is the geometric mean of the error ratios 1 + r, minus 1
    assert v.statistic == pytest.approx(np.expm1(np.log1p([0.19, 0.2, 0.21]).mean())) and v.per_seed == {
        f"res/s{s}": pytest.approx(x)
                                                                for s, x in enumerate((0.19, 0.20, 0.21))}
    # no plain twin: the contrast is not applicable, and says why
    c = _by_key(vs, "lesion-contrast")
    assert c.verdict == "not applicable" and "no plain twin" in c.reason and c.statistic is None
    # straddling: 0.2, 0.25, 0.3 -> CI contains 0.25 -> inconclusive
    tables = [_table(f"res/s{s}", 0.1, {n: 0.1 * (1 + inc) for n in names}) for s, inc in enumerate((0.2, 0.25, 0.3))]
    assert _by_key(L.single_deletion_verdicts(pd.concat(tables), roles, units), "lesion-single").verdict == "inconclusive"
    # wholly above: 0.5 ± 0.01 -> not supported
    tables = [_table(f"res/s{s}", 0.1, {n: 0.1 * (1 + inc) for n in names}) for s, inc in enumerate((0.49, 0.5, 0.51))]
    assert _by_key(L.single_deletion_verdicts(pd.concat(tables), roles, units), "lesion-single").verdict == "not supported"
    # the same numbers from networks at chance: not applicable, whatever the statistic
    chance_roles = {lab: role("res", s, True, error=0.88) for s, lab in enumerate(roles)}
    v = _by_key(L.single_deletion_verdicts(pd.concat(tables), chance_roles, units), "lesion-single")
    assert v.verdict == "not applicable" and "not a competent predictor" in v.reason and v.statistic is None


def _twins(plain_inc, res_inc=0.1, res_recipe="A", plain_recipe="A", plain_arch=((3,), 1000), res_error=0.2):
    names = [f"u{i}" for i in range(5)]
    roles, tables, units = {}, [], {}
    for s in range(3):
        for fam, inc, res, rec, arch in (("res", res_inc + 0.01 * s, True, res_recipe, ((3,), 1000)),
                                         ("plain", plain_inc + 0.1 * s, False, plain_recipe, plain_arch)):
            lab = f"{fam}/s{s}"
            tables.append(_table(lab, 0.2, {n: 0.2 * (1 + inc) for n in names}))
            roles[lab] = role(fam, s, res, rec, error=res_error if res else 0.2, arch=arch)
            units[lab] = _units(names)
    return L.single_deletion_verdicts(pd.concat(tables), roles, units)


def test_single_deletion_contrast_with_plain_twins_paired_by_seed():
    vs = _twins(3.0)
    v = _by_key(vs, "lesion-contrast")
    assert v.verdict == "supported" and v.n_seeds == 3 and v.statistic == pytest.approx(2.99)
    assert set(v.per_seed) == {f"plain/s{s} − res/s{s}" for s in range(3)}
    # the slogan is judged by its own criterion: an increase of 1.0 is no "barely matters"
    vs = _twins(3.0, res_inc=1.0)
    assert _by_key(vs, "lesion-contrast").verdict == "supported"
    assert _by_key(vs, "lesion-single").verdict == "not supported"
    # plain twins that degrade no more than the ResNet: the contrast is refuted
    assert _by_key(_twins(0.0), "lesion-contrast").verdict == "not supported"
    # differences 0.55/0.64/0.73 (t CI [0.42, 0.86], above 0.25), 0.35/0.44/0.53 ([0.22, 0.66], straddles) and
    # -0.2/-0.11/-0.02 ([-0.33, 0.11], below)
    assert _by_key(_twins(0.65), "lesion-contrast").verdict == "supported"
    assert _by_key(_twins(0.45), "lesion-contrast").verdict == "inconclusive"
    assert _by_key(_twins(-0.1), "lesion-contrast").verdict == "not supported"


def test_single_deletion_contrast_gates():
    # unknown recipes on both sides: no contrast, even though every number would support it
    v = _by_key(_twins(3.0, res_recipe=None, plain_recipe=None), "lesion-contrast")
    assert v.verdict == "not applicable" and "recipe" in v.reason
    v = _by_key(_twins(3.0, plain_arch=((5,), 1700)), "lesion-contrast")
    assert v.verdict == "not applicable" and "another depth" in v.reason
    # a ResNet at chance (branches scaled, plain weights loaded, zeroed shortcuts): not applicable
    vs = _twins(3.0, res_error=0.89)
    assert {v.verdict for v in vs} == {"not applicable"}


def test_single_network_verdict_uses_an_image_bootstrap(data):
    r = L.run([_subject("r20", "cifar_resnet20")], data, SPEC, _plan("single"))
    v = _by_key(r.verdicts, "lesion-single")
    # a random-init network is never judged; its numbers are still in the table
    assert v.verdict == "not applicable" and "competent" in v.reason and (r.table["mode"] == "single").any()
    assert v.scope.startswith("this network (") and v.n_seeds == 1


def test_no_cliff_verdict_on_smooth_and_abrupt_curves():
    def rk(model, base, meds, reps=5):
        rows = [dict(model=model, mode="baseline", deleted="", k=0, error=base, order="", n_images=1000)]
        rng = np.random.default_rng(0)
        for k, m in meds.items():
            rows += [dict(model=model, mode="random-k", deleted=f"c{k}{j}", k=k, error=m + rng.normal(0, 0.002),
                          order="", n_images=1000) for j in range(reps)]
        return L.typed(pd.DataFrame(rows))
    roles = {"r": role("r", None, True)}
    smooth = rk("r", 0.06, {k: 0.06 + 0.035 * k for k in range(1, 21)})  # 0.035 per unit of a 0.84 gap
    v = L.no_cliff_verdicts(smooth, roles, chance=0.9)[0]
    assert v.verdict == "supported" and v.statistic == pytest.approx(0.035 / 0.84, rel=0.1)
    cliff = rk("r", 0.06, {1: 0.07, 2: 0.08, 3: 0.85, 4: 0.88})  # one more unit closes most of the gap
    v = L.no_cliff_verdicts(cliff, roles, chance=0.9)[0]
    assert v.verdict == "not supported" and v.ci_low > 0.2
    # the zoo's case: one deletion takes 0.16 to 0.35, a quarter of the gap: no "no cliff"
    step = rk("r", 0.16, {1: 0.35, 2: 0.45, 4: 0.6, 8: 0.8})
    assert L.no_cliff_verdicts(step, roles, chance=0.9)[0].verdict == "not supported"
    assert L.no_cliff_verdicts(smooth, {"r": role("r", None, True, error=0.9)}, chance=0.9)[0].verdict == \
        "not applicable"


def test_cli_lesion_bad_unit_and_mismatched_weights(capsys, tmp_path):
    code = main(["lesion", "--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--mode", "set",
                 "--units", "layer1.0,layer4.0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown unit or block 'layer4.0'" in err and "layer3.0" in err
    code = main(["lesion", "--model", "cifar_resnet8", "--model", "cifar_plain8", "--weights", "x.pt",
                 "--data", "synthetic(n=16)", "--out", str(tmp_path)])
    assert code == 2 and "one --weights per --model" in capsys.readouterr().err


@pytest.mark.slow
def test_shared_resnet20_full_test_set_engine_equals_naive():
    """Every single-deletion n_wrong of the engine equals the naive evaluation over all 10,000 images."""
    need_shared(RESNET20, TEST_ARCHIVE)
    from resprobe.loading import load_data, load_model
    data = load_data(f"imagefolder:{TEST_ARCHIVE}", "test")
    model, _ = load_model("cifar_resnet20", str(RESNET20))
    view = anatomy(model, data.input_shape)
    configs = L.make_configs(view, _plan("single"))
    ours = engine_predictions(view, data, configs, normalize="imagenet")
    labels = data.labels.numpy()
    assert int((ours[0] != labels).sum()) == 1897
    for c, p in zip(configs, ours):
        ref = naive_predictions(model, view.names, data, c, normalize="imagenet")
        assert np.array_equal(p, ref), c
    errs = {view.names[c.deleted[0]]: float((p != labels).mean()) for c, p in zip(configs[1:], ours[1:])}
    # the downsampling units stand out: the two largest single-deletion errors
    assert set(sorted(errs, key=errs.get)[-2:]) == {"layer2.0", "layer3.0"}
