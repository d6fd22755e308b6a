"""The one-page report: every section has a verdict or an explicit failure; images decode; the demo."""
from __future__ import annotations

import base64
import json
import re

import pytest
import torch

import resprobe.probes.amplify as A
from resprobe.cli import main
from resprobe.engine import RunSpec
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.report.full import full_report, reported
from resprobe.study import Subject
from resprobe.verdict import OUTCOMES

from conftest import randomize_bn


def _models():
    torch.manual_seed(0)
    res = randomize_bn(build_model("cifar_resnet8", num_classes=4)).eval()
    plain = randomize_bn(build_model("cifar_plain8", num_classes=4), 1).eval()
    return [Subject("res", res, "none", {"model": "cifar_resnet8"}), Subject("plain", plain, "none", {"model": "cifar_plain8"})]


def _check_html(path):
    import io

    from PIL import Image
    html = path.read_text()
    tags = re.findall(r"<img\b[^>]*>", html)
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert imgs and len(tags) == len(imgs)  # every <img> is embedded, none points to a file
    for b64 in imgs:
        raw = base64.b64decode(b64, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(raw)) as im:
            im.load()  # decodes the whole image: a truncated PNG raises here
            assert im.size[0] > 50 and im.size[1] > 50
    return html


def test_full_report_sections_and_failure_isolation(tmp_path, monkeypatch):
    data = load_dataset("synthetic(n=48,classes=4,size=16)", "test")

    def broken(*a, **k):
        raise RuntimeError("amplify exploded")

    monkeypatch.setattr(A, "run", broken)
    sections = full_report(_models(), data, RunSpec(progress=False), "fast", out=tmp_path)
    assert {k.split("#")[0] for k in sections} == {k for s in reported() for k in s.verdict_keys}
    assert sections["amplify"]["verdict"] == "failed" and "amplify exploded" in sections["amplify"]["error"]
    for k, v in sections.items():
        assert v["verdict"] in OUTCOMES + ("failed",), k
        if k != "amplify":
            assert v["verdict"] != "failed", (k, v.get("error"))
            assert v["criterion"] and v["scope"] and "ci_low" in v and "statistic" in v
        # two random-init networks without a recorded recipe: every verdict about them is gated, none judged
        if not k.startswith(("amplify", "gradcorr-synthetic")):
            assert v["verdict"] == "not applicable" and v["reason"], k
    html = _check_html(tmp_path / "report.html")
    assert html.count("<b>Verdict:") == len(sections) - 1 and "amplify exploded" in html
    assert "not a competent predictor" in html and "Competence (the gate of every verdict" in html
    # the summary table of verdicts comes first
    assert html.index("<h2>Verdicts</h2>") < html.index("<b>Verdict:")
    meta = json.loads((tmp_path / "report.json").read_text())
    assert meta["provenance"]["data"]["n_images"] == len(data)
    assert (tmp_path / "results.csv").stat().st_size > 0
    for sec in ("lesion", "paths", "identity", "gradcorr", "gradcorr-synthetic"):
        assert (tmp_path / sec / "report.html").is_file()


@pytest.mark.slow
def test_demo_offline(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--model", "cifar_resnet8", "--plain", "cifar_plain8",
                 "--epochs", "1"]) == 0
    assert "report:" in capsys.readouterr().out
    _check_html(tmp_path / "report.html")
    meta = json.loads((tmp_path / "report.json").read_text())
    assert all(v["verdict"] in OUTCOMES for v in meta["sections"].values())
    from resprobe.io.checkpoint import sha256_file
    sha = sha256_file(tmp_path / "models" / "cifar_resnet8" / "model.pt")
    assert sha[:12] in (tmp_path / "report.html").read_text()  # provenance names the trained weights
