"""One report for every conjecture: runs each probe within a budget, computes a verdict per section
(criterion written out), and writes report.md, a self-contained report.html and results.csv.
A probe that fails is reported in its section; the others still run."""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Optional

import pandas as pd

from .document import Document
from .tables import provenance, write_json, write_table

__all__ = ["BUDGETS", "full_report"]

BUDGETS = {
    "fast": dict(images=500, randomk="1,2,4,8", samples=5, amplify_images=64, power_iters=5, paths_images=64,
                 paths_samples=5, gc_kinds=("ff-bn", "res-bn"), gc_depths=(1, 4, 16), gc_seeds=6, gc_width=100,
                 gc_points=128, gc_lines=4),
    "full": dict(images=None, randomk="1:20", samples=20, amplify_images=512, power_iters=10, paths_images=512,
                 paths_samples=20, gc_kinds=("ff", "ff-bn", "res", "res-bn", "ff-ll"),
                 gc_depths=(1, 2, 4, 8, 16, 24, 32, 50), gc_seeds=20, gc_width=200, gc_points=256, gc_lines=16),
}


def _section(doc: Document, title: str, fn, results: dict, key: str):
    t0 = time.time()
    doc.heading(title)
    try:
        verdict, criterion, bullets, images, frame = fn()
        doc.paragraph(f"**Verdict: {verdict}.** Criterion: {criterion}")
        doc.bullets(bullets)
        for path, cap in images:
            doc.image(path, cap)
        results[key] = dict(verdict=verdict, criterion=criterion, findings=bullets, seconds=time.time() - t0)
        return frame
    except Exception as e:  # noqa: BLE001 - one probe's failure must not lose the others
        doc.paragraph(f"**Verdict: failed** — {type(e).__name__}: {e}")
        doc.code(traceback.format_exc()[-2000:])
        results[key] = dict(verdict="failed", error=f"{type(e).__name__}: {e}", seconds=time.time() - t0)
        return None
    finally:
        doc.paragraph(f"Time: {time.time() - t0:.1f} s.")


def full_report(model: tuple, data, plain: Optional[tuple] = None, budget: str = "fast", normalize: str = "none",
                device="cpu", seed: int = 0, out: str | Path = "report", progress: bool = True) -> dict:
    """Run every probe on ``model`` = (label, nn.Module, provenance) (and its plain twin, if given)."""
    from ..probes.lesion import lesion_summary
    from .amplify import amplify_study
    from .gradcorr import gradcorr_synthetic_study, gradcorr_trained_study
    from .identity import identity_study
    from .lesion import lesion_study
    from .paths import paths_study, summarize_paths

    if budget not in BUDGETS:
        raise ValueError(f"--budget must be one of {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    models = [model] + ([plain] if plain else [])
    sub = data.subset(b["images"])
    chance = 1 - 1 / data.num_classes
    doc = Document("resprobe report: why does this residual network work?")
    doc.paragraph(f"Model `{model[0]}` ({model[2].get('model')}, weights sha256 "
                  f"{str(model[2].get('weights_sha256'))[:16]})" + (f"; plain twin `{plain[0]}`" if plain else "") +
                  f". Data `{data.spec}` [{data.split}], {len(sub)} of {len(data)} images, normalization "
                  f"`{normalize}`; budget `{budget}`; seed {seed}.")
    results: dict = {}
    frames = []
    state: dict = {}

    def lesion_part():
        d = out / "lesion"
        from ..anatomy import anatomy
        from ..probes.lesion import parse_range
        n_blocks = len(anatomy(model[1]))
        ks = [k for k in parse_range(b["randomk"], 10 ** 6) if k <= n_blocks]
        lesion_study([model], sub, "random-k", k=",".join(map(str, ks)), samples=b["samples"], seed=seed,
                     normalize=normalize, device=device, out=d, progress=progress)
        # single deletions last, for every model: the files then show all rows of the folder
        lesion_study(models, sub, "single", seed=seed, normalize=normalize, device=device, out=d, progress=progress)
        allrows = pd.read_csv(d / "lesion.csv")
        state["lesion"] = allrows
        summ = lesion_summary(allrows)
        s = summ[model[0]]
        mid = (s["baseline_error"] + chance) / 2
        med = s["median_single_deletion_error"]
        verdict = "supported" if med < mid else "not supported"
        bullets = [f"{model[0]}: baseline error {s['baseline_error']:.4f}; median single-deletion error {med:.4f}; "
                   f"worst block {s['worst_block']['block']} {s['worst_block']['error']:.4f}."]
        if plain:
            p = summ.get(plain[0], {})
            if "median_single_deletion_error" in p:
                bullets.append(f"{plain[0]}: baseline {p['baseline_error']:.4f}; median single-deletion error "
                               f"{p['median_single_deletion_error']:.4f}.")
        rk = s.get("random_k_median_error", {})
        if rk:
            bullets.append("Random k deleted, median error: " + ", ".join(f"k={k}: {v:.3f}" for k, v in rk.items()))
        imgs = [(d / "lesion_single.png", "one block deleted"), (d / "lesion_random_k.png", "k blocks deleted")]
        return (verdict, f"the ResNet's median single-deletion error stays below halfway between its baseline "
                         f"and chance ({mid:.3f})", bullets, imgs, allrows.assign(probe="lesion"))

    def paths_part():
        d = out / "paths"
        df = paths_study([model], data.subset(b["paths_images"]), samples=b["paths_samples"], seed=seed,
                         normalize=normalize, device=device, out=d, progress=progress)
        s = summarize_paths(df)[model[0]]
        lo, hi = s["range"]
        verdict = "supported" if hi < s["n_blocks"] / 2 else "not supported"
        return (verdict, "90% of the gradient comes from paths shorter than the typical path (n/2 blocks)",
                [f"90% of the gradient from path lengths {lo}–{hi} of {s['n_blocks']} ({s['fraction_of_paths']:.2%} "
                 f"of paths); peak at k = {s['peak_k']}."], [(d / "paths.png", "Veit Fig. 6")],
                df.assign(probe="paths"))

    def identity_part():
        d = out / "identity"
        df = identity_study(models, sub, normalize=normalize, device=device, seed=seed, out=d, progress=progress)
        meta = json.loads((d / "identity.json").read_text())
        eff = meta["effective_depth"].get(model[0], {})
        near, active = eff.get("near_identity_blocks", []), eff.get("active_blocks", [])
        les = state.get("lesion")
        verdict, bullets = "inconclusive", list(meta["findings"])
        if les is not None and near and active:
            single = les[(les["model"] == model[0]) & (les["mode"] == "single")].set_index("deleted")["error"]
            a, n_ = float(single.reindex(active).median()), float(single.reindex(near).median())
            verdict = "supported" if n_ < a else "not supported"
            bullets.append(f"median single-deletion error: near-identity blocks {n_:.4f}, active blocks {a:.4f}.")
        return (verdict, "blocks with ‖F‖/‖S‖ ≤ 0.3 (near identity) are cheaper to delete than the others "
                         "(median single-deletion error); inconclusive without near-identity blocks",
                bullets, [(d / "identity_residual_ratio.png", "‖F‖/‖S‖ per block"),
                          (d / "response_std.png", "He Fig. 7")], df.assign(probe="identity"))

    def amplify_part():
        d = out / "amplify"
        df = amplify_study(models, data.subset(b["amplify_images"]), power_iters=b["power_iters"],
                           normalize=normalize, device=device, seed=seed, out=d, progress=progress)
        v = json.loads((d / "amplify.json").read_text())["verdict"]
        return (v.get("verdict", "inconclusive"), v.get("criterion", "no residual block"), v["statements"],
                [(d / "amplify_gains.png", "gains"), (d / "amplify_ratios.png", "amplifier ratios")],
                df.assign(probe="amplify"))

    def gradcorr_part():
        d = out / "gradcorr"
        syn = gradcorr_synthetic_study(b["gc_kinds"], b["gc_depths"], b["gc_seeds"], b["gc_width"], b["gc_points"],
                                       seed=seed, out=d / "synthetic", progress=progress)
        tr = gradcorr_trained_study(models, data, lines=b["gc_lines"], points=b["gc_points"], seed=seed,
                                    normalize=normalize, device=device, out=d / "trained", progress=progress)
        agg = syn[(syn["seed"] == "all") & (syn["metric"] == "lag1")].set_index(["kind", "depth"])
        deep = max(b["gc_depths"])
        r, f = agg.loc[("res-bn", deep)], agg.loc[("ff-bn", deep)]
        verdict = "supported" if r["ci_low"] > f["ci_high"] and r["value"] - f["value"] > 0.3 else "not supported"
        meta = json.loads((d / "trained" / "gradcorr.json").read_text())
        return (verdict, f"at depth {deep}, the BN ResNet's lag-1 gradient autocorrelation exceeds the BN feedforward "
                         "net's by more than 0.3, with non-overlapping 95% CIs",
                [f"depth {deep}: res-bn lag-1 {r['value']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}), ff-bn "
                 f"{f['value']:.3f} ({f['ci_low']:.3f}–{f['ci_high']:.3f})."] + meta["findings"],
                [(d / "synthetic" / "gradcorr_traces.png", "Balduzzi Fig. 1"),
                 (d / "synthetic" / "gradcorr_lag1_vs_depth.png", "lag-1 vs depth"),
                 (d / "trained" / "gradcorr_block_profile.png", "trained networks")],
                pd.concat([syn.assign(probe="gradcorr-synthetic"), tr.assign(probe="gradcorr-trained")]))

    for title, fn, key in [("§2.1 Ensembles of shallow paths: lesions (Veit et al. 2016)", lesion_part, "lesion"),
                           ("§2.1 Ensembles of shallow paths: path lengths (Veit et al. 2016)", paths_part, "paths"),
                           ("§2.2 Self-adaptive depth: closeness to the identity", identity_part, "identity"),
                           ("§2.3 Differential amplifier: perturbation gains", amplify_part, "amplify"),
                           ("Shattered gradients (Balduzzi et al. 2017)", gradcorr_part, "gradcorr")]:
        frame = _section(doc, title, fn, results, key)
        if frame is not None:
            frames.append(frame)
    if frames:
        write_table(pd.concat(frames, ignore_index=True), out / "results.csv")
    prov = provenance([dict(m[2], label=m[0]) for m in models], data.describe(), seed, str(device),
                      time.time() - t_start, normalize, probe="report", budget=budget)
    write_json(dict(provenance=prov, sections=results), out / "report.json")
    doc.parts.insert(1, ("p", f"Total time {time.time() - t_start:.1f} s; resprobe {prov['versions']['resprobe']}, "
                              f"torch {prov['versions']['torch']}."))
    doc.write(out, "report")
    return results
