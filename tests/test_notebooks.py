"""The walkthrough notebook executes top to bottom (as CI runs it) and is stored without outputs."""
from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import RESNET20, ROOT, TEST_ARCHIVE, need_shared

NB = ROOT / "notebooks" / "walkthrough.ipynb"


def test_stored_without_outputs():
    nb = nbformat.read(NB, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def _execute(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("WALKTHROUGH_LIMIT", "300")
    monkeypatch.setenv("WALKTHROUGH_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NB, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "of predictions unchanged" in text
    from resprobe.report.full import reported
    verdicts = re.search(r"verdicts: (\{.*\})", text)
    assert verdicts and {k.split("#")[0] for k in eval(verdicts.group(1))} == {k for s in reported() for k in s.verdict_keys}
    assert all(v != "failed" for v in eval(verdicts.group(1)).values())
    assert (tmp_path / "report" / "report.html").is_file()
    return text


@pytest.mark.slow
def test_walkthrough_executes_on_the_shared_resnet20(tmp_path, monkeypatch):
    need_shared(RESNET20, TEST_ARCHIVE)
    text = _execute(tmp_path, monkeypatch)
    assert "shared data and weights: True" in text and "imagefolder:" in text


@pytest.mark.slow
def test_walkthrough_executes_offline_without_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("RESPROBE_SHARED", str(tmp_path / "no-shared"))
    text = _execute(tmp_path, monkeypatch)
    assert "shared data and weights: False" in text and "synthetic" in text
    assert (tmp_path / "resnet" / "model.pt").is_file() and (tmp_path / "plain" / "model.pt").is_file()
