"""The study protocol: a study declared once (one module, resprobe.studies.register) reaches the writer, the full
report and the command line without touching them. A toy study is registered here, run through all three,
and removed again."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from resprobe.cli import build_parser, main
from resprobe.engine import RunSpec
from resprobe.io.data import load_dataset
from resprobe.models import build_model
from resprobe.report import save
from resprobe.report.full import full_report, reported
from resprobe.studies import REGISTRY, get, studies
from resprobe.study import Command, Figure, Study, StudyResult, Subject
from resprobe.verdict import Claim, Interval, Margin

DATA = "synthetic(n=24,classes=4,size=16)"


def _run(subjects, data, spec, options=None) -> StudyResult:
    """Measures nothing: one row per network with the number of its parameters; one verdict on a fixed CI."""
    k = (options or {}).get("k", 1)
    table = pd.DataFrame([dict(model=s.label, params=sum(p.numel() for p in s.model.parameters()), k=k)
                          for s in subjects])
    claim = Claim("toy", "Toys have parameters", "the CI of log10(params) above 1", "log10 params",
                  Margin(1.0, "this test"), "above")
    v = claim.judge(Interval(2.0, 1.5, 2.5, "fixed"), "this network")
    return StudyResult("toy", table, verdicts=[v], findings=[f"{len(subjects)} networks counted"],
                       settings=dict(k=k))


def _figure(r: StudyResult):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.bar(r.table["model"], r.table["params"])
    ax.set_xlabel("network")
    ax.set_ylabel("parameters")
    return fig, ax


def _add(q):
    q.add_argument("--toy-k", type=int, default=3, help="a flag only this study has")


def _execute(inv) -> StudyResult:
    data, subjects = inv.load()
    return _run(subjects, data, inv.spec, inv.options)


TOY = Study(name="toy", order=99, title="A toy study", run=_run, verdict_keys=("toy",),
            figures=(Figure("toy_params", _figure, "Parameters per network: a bar per network, for the test."),),
            sections={"toy": ("toy_params",)},
            report=lambda run: _run(run.subjects, run.data, run.spec, {"k": 7}),
            budget=lambda name, n: f"the toy on {n} items",
            command=Command("a toy study (tests only)", _add, _execute, options=lambda a: {"k": a.toy_k}))


@pytest.fixture
def toy():
    REGISTRY["toy"] = TOY
    try:
        yield TOY
    finally:
        REGISTRY.pop("toy", None)


def test_a_declared_study_reaches_the_cli_the_writer_and_the_report(toy, tmp_path, capsys):
    assert get("toy") is toy and toy in studies() and toy in reported()
    assert "toy" in build_parser()._subparsers._group_actions[0].choices
    out = tmp_path / "cli"
    code = main(["toy", "--model", "cifar_resnet8", "--random-init", "--data", DATA, "--toy-k", "5", "--out",
                 str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(out / "toy.csv")
    assert list(table["k"]) == [5] and table["params"].iloc[0] == sum(
        p.numel() for p in build_model("cifar_resnet8", num_classes=4).parameters())
    meta = json.loads((out / "toy.json").read_text())
    assert meta["verdicts"][0]["key"] == "toy" and meta["verdicts"][0]["verdict"] == "supported"
    assert (out / "toy_params.png").is_file() and "Parameters per network" in (out / "report.html").read_text()

    data = load_dataset(DATA, "test")
    subj = [Subject("r8", build_model("cifar_resnet8", num_classes=4).eval(), "none", {"model": "cifar_resnet8"})]
    files = save(_run(subj, data, RunSpec(progress=False)), tmp_path / "api")
    assert {p.name for p in files} >= {"toy.csv", "toy.json", "toy_params.png", "toy_params.svg", "report.html"}


def test_the_full_report_runs_a_declared_study_in_its_place(toy, tmp_path, monkeypatch):
    others = [s for s in studies() if s is not toy]
    for s in others:  # only the toy: the report loop itself is under test, not the other studies
        monkeypatch.setitem(REGISTRY, s.name, Study(s.name, s.title, s.run, s.order, figures=s.figures))
    data = load_dataset(DATA, "test")
    subj = [Subject("r8", build_model("cifar_resnet8", num_classes=4).eval(), "none", {"model": "cifar_resnet8"})]
    sections = full_report(subj, data, RunSpec(progress=False, n_boot=100), "fast", tmp_path)
    assert list(sections) == ["toy"] and sections["toy"]["verdict"] == "supported"
    assert pd.read_csv(tmp_path / "toy" / "toy.csv")["k"].tolist() == [7]
    html = (tmp_path / "report.html").read_text()
    assert "Toys have parameters" in html and "toy on 24 items" in html and "Parameters per network" in html


def test_a_failing_declared_study_is_reported_failed_and_the_others_still_run(toy, tmp_path, monkeypatch):
    def boom(run):
        raise RuntimeError("toy exploded")
    for s in [s for s in studies() if s is not toy]:
        monkeypatch.setitem(REGISTRY, s.name, Study(s.name, s.title, s.run, s.order))
    monkeypatch.setitem(REGISTRY, "toy2", Study("toy2", "another toy", _run, 100, verdict_keys=("toy2",),
                                                report=boom, budget=lambda n, k: "boom"))
    data = load_dataset(DATA, "test")
    subj = [Subject("r8", build_model("cifar_resnet8", num_classes=4).eval(), "none", {"model": "cifar_resnet8"})]
    sections = full_report(subj, data, RunSpec(progress=False, n_boot=100), "fast", tmp_path)
    assert sections["toy"]["verdict"] == "supported"
    assert sections["toy2"]["verdict"] == "failed" and "toy exploded" in sections["toy2"]["error"]
