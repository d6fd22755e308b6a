"""Writes notebooks/walkthrough.ipynb (stored without outputs; CI executes it: tests/test_notebooks.py)."""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = [
    new_markdown_cell("""# resprobe walkthrough: why does this residual network work?

This notebook uses the Python API — the same functions the `resprobe` command calls. It runs on the
pretrained He et al. ResNet-20 in `../shared/models` and the JPEG CIFAR-10 test set when they are
present; otherwise it trains the demo's small ResNet and its plain twin on the offline synthetic set
(a minute on 2 CPU cores). Every result is a long-format pandas DataFrame; every plot returns `(fig, ax)`."""),
    new_code_cell("""import os
from pathlib import Path

import torch

import resprobe
from resprobe.anatomy import anatomy
from resprobe.api import load_data, load_model
from resprobe.engine import evaluate

HERE = Path.cwd()
ROOT = HERE if (HERE / "resprobe").is_dir() else HERE.parent
SHARED = Path(os.environ.get("RESPROBE_SHARED", ROOT.parent / "shared"))
LIMIT = int(os.environ.get("WALKTHROUGH_LIMIT", "500"))   # images used below (seeded subset)
OUT = Path(os.environ.get("WALKTHROUGH_OUT", ROOT / "runs" / "walkthrough"))   # trained demo nets, the report
torch.manual_seed(0)
print("resprobe", resprobe.__version__, "| shared data and weights:", SHARED.is_dir())"""),
    new_markdown_cell("## 1. A network and its data\n\nA pretrained checkpoint when available, else the demo's "
                      "networks trained here (`resprobe.training.train`, the function behind `resprobe train`)."),
    new_code_cell("""weights20 = SHARED / "models" / "resnet20-12fca82f.th"
plain20 = ROOT / "zoo" / "cifar_plain20" / "model.pt"
if weights20.is_file():
    data = load_data(f"imagefolder:{SHARED / 'data' / 'cifar10-jpeg-test.tar.gz'}", "test", limit=LIMIT)
    model, prov = load_model("cifar_resnet20", str(weights20))
    plain, plain_prov = load_model("cifar_plain20", str(plain20))
    NORM = "imagenet"   # the shared checkpoints expect ImageNet statistics
else:
    from resprobe.training import train
    tr, data = load_data("synthetic(n=2000)", "train"), load_data("synthetic(n=500)", "test")
    kw = dict(num_classes=tr.num_classes, in_channels=tr.input_shape[0])
    model, prov = load_model("cifar_resnet14", **kw)
    plain, plain_prov = load_model("cifar_plain14", **kw)
    for name, m in (("resnet", model), ("plain", plain)):
        train(m, tr, data, 4, OUT / name, lr=0.05, schedule="cosine", normalize="none",
              progress=False)
    NORM = "none"
models = [("resnet", model, prov)]
twin = ("plain", plain, plain_prov)
print(data.describe()["spec"], len(data), "images")
evaluate(model, data, normalize=NORM, progress=False)"""),
    new_markdown_cell("## 2. The residual anatomy\n\nEvery probe sees the network as stem → blocks (residual "
                      "branch F, shortcut S, post-activation) → head, and can run it from any block with "
                      "blocks deleted, swapped or scaled."),
    new_code_cell("""import pandas as pd
from resprobe.anatomy import Edits

view = anatomy(model, data.input_shape)
print(view.check_decomposition(torch.rand(4, *data.input_shape)))   # max |stem→blocks→head − model(x)|
pd.DataFrame(view.table()).head(6)"""),
    new_code_cell("""x, y, _ = next(data.batches(64, NORM))
with torch.no_grad():
    full = view(x)                                            # stem -> every block -> head
    without = view(x, edits=Edits(delete=frozenset({1})))     # block 1's residual branch deleted
print(f"{view.blocks[1].name} deleted: {(full.argmax(1) == without.argmax(1)).float().mean().item():.1%} "
      "of predictions unchanged")"""),
    new_markdown_cell("## 3. Ensembles of shallow paths (Veit et al. 2016): lesions"),
    new_code_cell("""from resprobe.probes.lesion import lesion_summary
from resprobe.report.lesion import lesion_study
from resprobe.report.plots import lesion_single_plot

les = lesion_study(models + [twin], data, "single", normalize=NORM, progress=False)
tables = {lab: anatomy(m, data.input_shape).table() for lab, m, _ in models + [twin]}
fig, ax = lesion_single_plot(les, tables)
lesion_summary(les)"""),
    new_markdown_cell("## 4. Path lengths: which paths carry the gradient?"),
    new_code_cell("""from resprobe.report.paths import paths_study, summarize_paths

paths = paths_study(models, data.subset(16), samples=3, normalize=NORM, progress=False)
summarize_paths(paths)"""),
    new_markdown_cell("## 5. Self-adaptive depth: how close is each block to the identity? (He et al. Fig. 7)"),
    new_code_cell("""from resprobe.probes.identity import effective_depth
from resprobe.report.identity import identity_study
from resprobe.report.plots import response_std_plot

ident = identity_study(models + [twin], data, normalize=NORM, n_boot=200, progress=False)
fig, ax = response_std_plot(ident)
print({m: v["effective_depth"] for m, v in effective_depth(ident).items()})
ident[ident.metric == "residual_ratio"][["model", "block", "value", "ci_low", "ci_high"]].head()"""),
    new_markdown_cell("## 6. Differential amplifier: do residual blocks amplify perturbations?"),
    new_code_cell("""from resprobe.report.amplify import amplify_study, amplify_verdict

amp = amplify_study(models + [twin], data.subset(16), eps=(1e-3,), power_iters=3, normalize=NORM, progress=False)
amplify_verdict(amp, plain_models=["plain"])["statements"][:3]"""),
    new_markdown_cell("## 7. Shattered gradients (Balduzzi et al. 2017), synthetic reproduction"),
    new_code_cell("""from resprobe.report.gradcorr import gradcorr_synthetic_study

sh = gradcorr_synthetic_study(kinds=("ff-bn", "res-bn"), depths=(1, 8, 24), seeds=4, points=128, progress=False)
sh[(sh.seed == "all") & (sh.metric == "lag1")][["kind", "depth", "value", "ci_low", "ci_high"]]"""),
    new_markdown_cell("## 8. Everything at once: the report\n\n`full_report` is what `resprobe report` runs: one "
                      "section per conjecture, each with its evidence, a verdict computed from the numbers and "
                      "its criterion, in a self-contained HTML page."),
    new_code_cell("""from resprobe.report.full import full_report

res = full_report(models[0], data, twin, "fast", NORM, "cpu", 0, OUT / "report", progress=False)
print("verdicts:", {k: v["verdict"] for k, v in res.items()})
print("report:", OUT / "report" / "report.html")"""),
]
nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                         "language": "python"}})
nbformat.write(nb, Path(__file__).with_name("walkthrough.ipynb"))
