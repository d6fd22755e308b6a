"""The HTML report renders in headless Chromium: images decode, no script error (skipped without a
browser: CI has none; `apt-get install chromium` to run it)."""
from __future__ import annotations

import base64
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from render_check import check, find_browser  # noqa: E402

pytestmark = pytest.mark.skipif(find_browser() is None, reason="no Chromium installed (apt-get install chromium)")


def _page(tmp_path, body):
    p = tmp_path / "page.html"
    p.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return p


def _png():
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def test_checker_sees_good_and_broken_pages(tmp_path):
    good = check(_page(tmp_path, f"<img alt='a' src='data:image/png;base64,{_png()}'>"))
    assert good["ok"] and good["images"] == 1
    bad = check(_page(tmp_path, "<img alt='cut' src='data:image/png;base64,iVBORw0KGgo='>"
                                "<script>undefinedFunction()</script>"))
    assert not bad["ok"] and bad["broken"] == ["cut"] and bad["errors"]


def test_demo_report_renders(tmp_path):
    import os
    import shutil

    from resprobe.cli import main
    assert main(["demo", "--out", str(tmp_path), "--model", "cifar_resnet8", "--plain", "cifar_plain8",
                 "--epochs", "1", "--quiet"]) == 0
    res = check(tmp_path / "report.html", screenshot=tmp_path / "shot.png")
    assert res["ok"], res
    assert res["images"] >= 8 and (tmp_path / "shot.png").stat().st_size > 10_000
    keep = os.environ.get("RESPROBE_ARTIFACTS")
    if keep:  # CI keeps the screenshot as an artefact
        os.makedirs(keep, exist_ok=True)
        shutil.copy(tmp_path / "shot.png", os.path.join(keep, "report-screenshot.png"))


def test_language_model_report_renders(tmp_path):
    """The LM report (a random twin decoder and its plain twin on text) renders with its figures."""
    from resprobe.cli import main
    spec = "hf-config:resprobe_twin(hidden_size=32, num_hidden_layers=4{})"
    assert main(["report", "--model", spec.format(""), "--plain", spec.format(", residual=False"), "--random-init",
                 "--data", "text:pydoc@test", "--seq-len", "32", "--limit", "24", "--quiet", "--out",
                 str(tmp_path)]) == 0
    res = check(tmp_path / "report.html")
    assert res["ok"], res
    assert res["images"] >= 6
