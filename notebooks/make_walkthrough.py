"""Writes notebooks/walkthrough.ipynb (stored without outputs; CI executes it: tests/test_notebooks.py)."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("""# resprobe walkthrough: why does this residual network work?

This notebook uses the Python API — the same functions the `resprobe` command calls. Each study is
`run(subjects, data, spec, options) -> StudyResult` (a long DataFrame, a summary, verdict records) and
`save(result, folder)` writes its files. It runs on the zoo's ResNet-20 and its plain twin (trained here
with one recipe) and the JPEG CIFAR-10 test set when `../shared` is present; otherwise it trains the
demo's small ResNet and its plain twin on the offline synthetic set (a minute on 2 CPU cores)."""),
    new_code_cell("""import os
from pathlib import Path

import torch

import resprobe
from resprobe import api
from resprobe.anatomy import Edits, anatomy

HERE = Path.cwd()
ROOT = HERE if (HERE / "resprobe").is_dir() else HERE.parent
SHARED = Path(os.environ.get("RESPROBE_SHARED", ROOT.parent / "shared"))
LIMIT = int(os.environ.get("WALKTHROUGH_LIMIT", "500"))   # images used below (seeded subset)
OUT = Path(os.environ.get("WALKTHROUGH_OUT", ROOT / "runs" / "walkthrough"))   # trained demo nets, the report
SPEC = api.RunSpec(progress=False, n_boot=200)
torch.manual_seed(0)
print("resprobe", resprobe.__version__, "| shared data and weights:", (SHARED / "data").is_dir())"""),
    new_markdown_cell("## 1. Networks and data\n\nThe zoo's equal-recipe twins with the shared test set when "
                      "available, else the demo's networks trained here (`resprobe.training.train`, the function "
                      "behind `resprobe train`)."),
    new_code_cell("""test_set = SHARED / "data" / "cifar10-jpeg-test.tar.gz"
if test_set.is_file():
    data = api.load_data(f"imagefolder:{test_set}", "test", limit=LIMIT)
    weights = [[str(ROOT / "zoo" / "cifar_resnet20" / "model.pt")], [str(ROOT / "zoo" / "cifar_plain20" / "model.pt")]]
    specs = ["cifar_resnet20", "cifar_plain20"]
else:
    from resprobe.training import Recipe, TrainRun, train
    tr, data = api.load_data("synthetic(n=2000)", "train"), api.load_data("synthetic(n=500)", "test")
    specs, weights = ["cifar_resnet14", "cifar_plain14"], []
    for name, spec in zip(("resnet", "plain"), specs):
        model, _ = api.load_model(spec, num_classes=tr.num_classes)
        train(model, tr, data, Recipe(4, lr=0.05, schedule="cosine"), OUT / name,
              TrainRun(overwrite=True, progress_bar=False, config=dict(model=spec)))
        weights.append([str(OUT / name / "model.pt")])
subjects = api.load_subjects(specs, weights, data, labels=["resnet", "plain"])
print(data.describe()["spec"], len(data), "images;", [(s.label, s.normalize, s.recipe) for s in subjects])
api.evaluate(subjects[0].model, data, SPEC, subjects[0].normalize)"""),
    new_markdown_cell("## 2. The residual anatomy\n\nEvery probe sees the network as stem → residual units "
                      "(branch F, shortcut S, post) → head, and can run it from any unit with units deleted, "
                      "swapped, scaled, run in parallel or repeated."),
    new_code_cell("""import pandas as pd

res = subjects[0]
view = anatomy(res.model, data.input_shape)
print(view.check_decomposition(torch.rand(4, *data.input_shape)))   # max |stem→units→head − model(x)|
pd.DataFrame(view.table()).head(6)"""),
    new_code_cell("""x, y, _ = next(data.batches(64, res.normalize))
with torch.no_grad():
    full = view(x)                                            # stem -> every unit -> head
    without = view(x, edits=Edits(delete=frozenset({1})))     # unit 1's residual branch deleted
    logits, steps = view.run_with_cache(x)                    # every unit's x, S(x), F(x), y
print(f"{view[1].name} deleted: {(full.argmax(1) == without.argmax(1)).float().mean().item():.1%} "
      "of predictions unchanged;", f"‖F‖/‖S‖ of unit 1: {(steps[1].f.norm() / steps[1].s.norm()).item():.3f}")"""),
    new_markdown_cell("## 3. Ensembles of shallow paths (Veit et al. 2016): lesions"),
    new_code_cell("""les = api.lesion.run(subjects, data, SPEC, api.lesion.LesionPlan(mode="single"))
for v in les.verdicts:
    print(v.verdict, "—", v.conjecture, "|", v.statistic_name, v.statistic, (v.ci_low, v.ci_high), v.scope, v.reason)
les.table.head()"""),
    new_markdown_cell("## 4. Path lengths: which paths carry the gradient?"),
    new_code_cell("""paths = api.paths.run(subjects[:1], data.subset(16), SPEC.replace(batch_size=64), api.paths.PathsOptions(samples=3))
paths.findings"""),
    new_markdown_cell("## 5. Closeness to the identity (He et al. Fig. 7, Jastrzebski et al.)"),
    new_code_cell("""from resprobe.figures import response_std_plot

ident = api.identity.run(subjects, data, SPEC)
fig, ax = response_std_plot(ident.table)
print(ident.verdicts[0].verdict, ident.verdicts[0].reason)
ident.summary["effective_depth"]"""),
    new_markdown_cell("## 6. Differential amplifier: are residual branches more sensitive than plain units?"),
    new_code_cell("""amp = api.amplify.run(subjects, data.subset(16), SPEC.replace(batch_size=16),
                      api.amplify.AmplifyOptions(eps=(1e-3,), power_iters=3))
amp.findings[:3]"""),
    new_markdown_cell("## 7. Shattered gradients (Balduzzi et al. 2017), synthetic reproduction"),
    new_code_cell("""sh = api.gradcorr.run_synthetic(api.gradcorr.SyntheticOptions(kinds=("ff-bn", "res-bn"), depths=(1, 8, 24),
                                                             seeds=4, points=128), SPEC)
sh.table[(sh.table.seed == "all") & (sh.table.metric == "lag1")][["kind", "depth", "value", "ci_low", "ci_high"]]"""),
    new_markdown_cell("## 8. Saving one study, and everything at once: the report\n\n`api.save` writes a study's "
                      "CSV, JSON, figures and page; `full_report` is what `resprobe report` runs: the table of "
                      "verdicts, then one section per conjecture."),
    new_code_cell("""api.save(les, OUT / "lesion")
sections = api.full_report(subjects, data, SPEC, "fast", OUT / "report")
print("verdicts:", {k: v["verdict"] for k, v in sections.items()})
print("report:", OUT / "report" / "report.html")"""),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("walkthrough.ipynb"))
