"""Every plot function on small real results: every axis and colour bar labelled, every legend inside the
figure, no network's series silently missing, integer ticks where the axis counts."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from resprobe.engine import RunSpec  # noqa: E402
from resprobe.io.data import load_dataset  # noqa: E402
from resprobe.models import build_model  # noqa: E402
from resprobe.probes import amplify, gradcorr, identity, lesion, paths, prune  # noqa: E402
from resprobe import figures as plots  # noqa: E402
from resprobe.studies import studies  # noqa: E402
from resprobe.study import Subject  # noqa: E402

from conftest import randomize_bn  # noqa: E402

SPEC = RunSpec(batch_size=32, n_boot=100, progress=False)


@pytest.fixture(scope="module")
def results():
    data = load_dataset("synthetic(n=48,classes=4,size=16)", "test")
    subj = []
    for label, spec in (("res14", "cifar_resnet14"), ("plain14", "cifar_plain14"), ("res8", "cifar_resnet8")):
        torch.manual_seed(len(label))
        subj.append(Subject(label, randomize_bn(build_model(spec, num_classes=4)).eval(), "none", {"model": spec}))
    out = {}
    single = lesion.run(subj, data, SPEC, lesion.LesionPlan("single"))
    rk = lesion.run(subj[:1] + subj[2:], data, SPEC, lesion.LesionPlan("random-k", ks=(1, 2, 3), samples=3))
    ro = lesion.run(subj[:1], data, SPEC, lesion.LesionPlan("reorder", ks=(1, 2, 4), samples=4))
    import pandas as pd
    single.table = pd.concat([single.table, rk.table, ro.table], ignore_index=True)
    out["lesion"] = single
    out["identity"] = identity.run(subj, data, SPEC, identity.IdentityOptions(grad=True, cka_minibatch=8))
    out["paths"] = paths.run(subj, data.subset(16), SPEC, paths.PathsOptions(samples=2))
    out["amplify"] = amplify.run(subj, data.subset(8), SPEC, amplify.AmplifyOptions(eps=(1e-3, 1e-2), power_iters=2))
    out["gradcorr"] = gradcorr.run(subj, data, SPEC, gradcorr.LineOptions(3, points=32))
    out["gradcorr-synthetic"] = gradcorr.run_synthetic(gradcorr.SyntheticOptions(
        kinds=("ff", "ff-bn", "res-bn"), depths=(1, 4, 8), seeds=3, width=16, points=32), SPEC)
    out["prune"] = prune.run(subj, data, SPEC, prune.PruneOptions(ns=(1, 2)))
    return out


def _axes_checked(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    fb = fig.bbox
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), "colour bar without a label"
            continue
        assert ax.get_xlabel().strip(), f"no x label: {ax.get_title()}"
        assert ax.get_ylabel().strip(), f"no y label: {ax.get_title()}"
    for leg in list(fig.legends) + [a.get_legend() for a in fig.axes if a.get_legend()]:
        b = leg.get_window_extent(renderer)
        assert b.x0 >= fb.x0 - 1 and b.y0 >= fb.y0 - 1 and b.x1 <= fb.x1 + 1 and b.y1 <= fb.y1 + 1, \
            "legend outside the figure"
    return fig


def _labels(fig) -> str:
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    texts += [t.get_text() for a in fig.axes if a.get_legend() for t in a.get_legend().get_texts()]
    return " | ".join(texts)


@pytest.mark.parametrize("study", [s.name for s in studies() if s.figures])
def test_every_figure_of_every_study(results, study):
    if study not in results:
        pytest.skip("degradation: see test_training_curves")
    r = results[study]
    drawn = 0
    for f in next(s for s in studies() if s.name == study).figures:
        made, caption = f.draw(r), f.caption
        if made is None:
            continue
        fig = _axes_checked(made[0])
        assert caption and len(caption) > 40
        drawn += 1
        plt.close(fig)
    assert drawn >= 1


def test_no_series_silently_disappears(results):
    r = results["lesion"]
    fig, ax = plots.lesion_single_plot(r.table, r.units)
    text = _labels(fig)
    for m in ("res14", "plain14", "res8"):
        assert f"{m}: one unit deleted" in text and f"{m}: intact" in text
    assert "plain14: not deletable" in text  # its shape-changing units are marked, not drawn through
    plt.close(fig)
    fig, ax = plots.lesion_random_k_plot(r.table)
    text = _labels(fig)
    assert "res14 (median)" in text and "res8 (median)" in text and "plain14" not in text  # no random-k rows
    assert all(float(t).is_integer() for t in ax.get_xticks())
    plt.close(fig)
    a = results["amplify"]
    fig, ax = plots.amplify_kappa_plot(a.table, a.units)
    text = _labels(fig)
    for m in ("res14", "plain14", "res8"):
        assert f"{m}: κ, random" in text and f"{m}: κ, worst-case" in text
    plt.close(fig)
    i = results["identity"]
    fig, ax = plots.identity_metric_plot(i.table, "branch_ratio", i.units)
    # networks of different depths line up by stage: the stage ticks are at the same place for both
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage 1", "stage 2", "stage 3"]
    plt.close(fig)


def test_units_line_up_by_stage():
    units8 = [dict(name=f"layer{s}.0", block=f"layer{s}.0", stage=s - 1) for s in (1, 2, 3)]
    units14 = [dict(name=f"layer{s}.{i}", block=f"layer{s}.{i}", stage=s - 1) for s in (1, 2, 3) for i in range(2)]
    p8, p14 = plots.unit_positions(units8), plots.unit_positions(units14)
    assert p8["layer2.0"] == 1.5 and p14["layer2.0"] == 1.25 and p14["layer2.1"] == 1.75
    assert all(int(p8[u["name"]]) == u["stage"] for u in units8)


def test_training_curves():
    import pandas as pd
    rows = []
    for model, fam, depth in (("cifar_plain20", "plain", 20), ("cifar_resnet20", "residual", 20)):
        for seed in (0, 1):
            for split in ("train", "test"):
                for e in range(1, 4):
                    rows.append(dict(model=model, seed=seed, family=fam, depth=depth, epoch=e, split=split,
                                     error=0.5 / e, loss=1.0))
    fig, axes = plots.training_curves_plot(pd.DataFrame(rows))
    _axes_checked(fig)
    assert "cifar_plain20 train" in _labels(fig)
    plt.close(fig)
