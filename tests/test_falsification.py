"""The falsification suite: networks that must not support any conjecture never get "supported".

Adversarial subjects are made from the zoo's equal-recipe twins by transformations, here, in the tests (no new
files): a random-init ResNet-20, a ResNet-20 whose branches are scaled ×10 (at chance), the plain twin's
weights loaded into the ResNet, a ResNet whose shortcuts are multiplied by zero, networks with unknown recipes,
and twins of another depth. The adversaries claim the zoo twins' recipe (a lying provenance): the competence
gate alone must stop them. The positive case — the real twins, three seeds — must keep the contrast its
evidence supports. The fast tests run the studies on 300 test images; the slow test runs ``resprobe report``
itself on adversarial checkpoints written with the zoo's ``config.json`` beside them."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn as nn

from resprobe.cli import main
from resprobe.engine import RunSpec
from resprobe.io.data import load_dataset
from resprobe.loading import load_model, recipe_key
from resprobe.models import build_model
from resprobe.probes import amplify, gradcorr, identity, lesion, paths
from resprobe.study import Subject

from conftest import ROOT, TEST_ARCHIVE, need_shared

ZOO = ROOT / "zoo"
SPEC = RunSpec(batch_size=100, n_boot=200, progress=False)


def _path(name: str, seed: int):
    return ZOO / (name if seed == 0 else f"{name}_seed{seed}") / "model.pt"


def twin(name: str, seed: int) -> Subject:
    path = _path(name, seed)
    model, prov = load_model(name, str(path))
    return Subject(f"{name}/s{seed}", model.eval(), "imagenet", prov, group=name, seed=seed,
                   recipe=recipe_key(str(path), name))


class Zero(nn.Module):
    def forward(self, x):
        return x * 0


def random_init(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet20", num_classes=10)


def scaled_branches(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, mod in m.named_modules():
            if name.endswith(".bn2"):
                mod.weight.mul_(10)
                mod.bias.mul_(10)
    return m


def plain_weights(m: nn.Module) -> nn.Module:
    m.load_state_dict(torch.load(_path("cifar_plain20", 0), weights_only=True))
    return m


def zero_shortcuts(m: nn.Module) -> nn.Module:
    for mod in m.modules():
        if hasattr(mod, "shortcut") and isinstance(mod.shortcut, nn.Identity):
            mod.shortcut = Zero()
    return m


ADVERSARIES = {"random-init": random_init, "branches-x10": scaled_branches, "plain-weights": plain_weights,
               "zero-shortcuts": zero_shortcuts}


def adversary(kind: str, seed: int = 0) -> Subject:
    """A ResNet-20 made unfit by ``kind``, claiming the zoo twins' recipe and seed."""
    s = twin("cifar_resnet20", seed)
    s.model = ADVERSARIES[kind](s.model).eval()
    s.label = f"{kind}/s{seed}"
    return s


@pytest.fixture(scope="module")
def data():
    need_shared(TEST_ARCHIVE)
    return load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test").subset(300)


def _studies(subjects, data):
    """Every study's verdicts about ``subjects`` (small settings)."""
    les = lesion.run(subjects, data, SPEC, lesion.LesionPlan("single"))
    out = list(les.verdicts)
    ident = identity.run(subjects, data, SPEC)
    out += ident.verdicts + identity.refinement_verdicts(ident.table, les.table, ident.roles, 200)
    res = [s for s in subjects if s.label.split("/")[0] != "cifar_plain20"]
    out += paths.run(res, data.subset(16), SPEC.replace(batch_size=16), paths.PathsOptions(samples=2)).verdicts
    out += amplify.run(subjects, data.subset(32), SPEC.replace(batch_size=32),
                       amplify.AmplifyOptions(eps=(1e-2,), power_iters=2)).verdicts
    out += gradcorr.run(subjects, data, SPEC, gradcorr.LineOptions(lines=2, points=16)).verdicts
    return out


@pytest.mark.parametrize("kind", list(ADVERSARIES))
def test_adversaries_never_supported(kind, data):
    subjects = [adversary(kind), twin("cifar_plain20", 0)]
    assert subjects[0].recipe == subjects[1].recipe is not None  # it claims the twin's recipe
    vs = _studies(subjects, data)
    assert subjects[0].competence.error > 0.8 and not subjects[0].competence.competent
    about = [v for v in vs if "cifar_resnet20" in v.conjecture or "Residual" in v.conjecture or "ResNet" in v.conjecture]
    assert about and not [v for v in vs if v.verdict == "supported"], [(v.key, v.verdict) for v in vs]
    assert all(v.verdict == "not applicable" and v.reason for v in about)


def test_unknown_recipes_and_other_depths_are_never_contrasted(data):
    r, p = twin("cifar_resnet20", 0), twin("cifar_plain20", 0)
    r.recipe = p.recipe = None                       # two unknown recipes are not one recipe
    les = lesion.run([r, p], data, SPEC, lesion.LesionPlan("single"))
    c = next(v for v in les.verdicts if v.key == "lesion-contrast")
    assert c.verdict == "not applicable" and "recipe" in c.reason
    # the absolute verdict about the ResNet alone is still judged
    assert next(v for v in les.verdicts if v.key == "lesion-single").verdict != "not applicable"
    deep = Subject("resnet32", build_model("cifar_resnet32", num_classes=10).eval(), "imagenet", group="cifar_resnet32",
                   seed=0, recipe=twin("cifar_resnet20", 0).recipe)
    deep.model.load_state_dict(build_model("cifar_resnet32", num_classes=10).state_dict())
    vs = identity.run([deep, twin("cifar_plain20", 0)], data, SPEC).verdicts
    assert {v.verdict for v in vs} == {"not applicable"}
    assert any("another depth" in v.reason or "competent" in v.reason for v in vs)


def test_positive_case_the_zoo_twins(data):
    """The real twins, three seeds: deleting one plain unit costs far more than one residual unit."""
    subjects = [twin(n, s) for n in ("cifar_resnet20", "cifar_plain20") for s in range(3)]
    les = lesion.run(subjects, data, SPEC, lesion.LesionPlan("single"))
    c = next(v for v in les.verdicts if v.key == "lesion-contrast")
    assert c.verdict == "supported" and c.n_seeds == 3 and len(c.per_seed) == 3, c
    assert all(s.competence.competent for s in subjects)
    # and the slogan is not: each ResNet's own median relative increase is far above Veit's
    alone = next(v for v in les.verdicts if v.key == "lesion-single")
    assert alone.verdict == "not supported" and min(alone.per_seed.values()) > 0.25


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random-init", "branches-x10", "plain-weights"])
def test_adversaries_through_the_real_report(kind, tmp_path, data):
    """``resprobe report`` on adversarial checkpoints whose config.json claims the zoo twins' recipe (zeroed
    identity shortcuts are no weights: that adversary is run in memory above)."""
    folder = tmp_path / kind
    folder.mkdir()
    torch.save(adversary(kind).model.state_dict(), folder / "model.pt")
    shutil.copy(ZOO / "cifar_resnet20" / "config.json", folder / "config.json")
    out = tmp_path / "report"
    code = main(["report", "--model", "cifar_resnet20", "--weights", str(folder / "model.pt"),
                 "--plain", "cifar_plain20", "--plain-weights", str(_path("cifar_plain20", 0)),
                 "--data", f"imagefolder:{TEST_ARCHIVE}", "--limit", "500", "--out", str(out), "--quiet"])
    assert code == 0
    sections = json.loads((out / "report.json").read_text())["sections"]
    assert not [k for k, v in sections.items() if v["verdict"] in ("supported", "failed")], sections
    html = (out / "report.html").read_text()
    assert "not a competent predictor" in html


def test_weights_trained_as_another_model_have_no_recipe():
    """A plain twin's checkpoint loaded into a ResNet: its recorded recipe is not this network's."""
    plain = str(_path("cifar_plain20", 0))
    assert recipe_key(plain, "cifar_plain20") is not None
    assert recipe_key(plain, "cifar_resnet20") is None
    assert recipe_key(plain) == recipe_key(plain, "cifar_plain20") == recipe_key(str(_path("cifar_resnet20", 0)))


def test_competence_comes_from_the_studys_own_pass(data, monkeypatch):
    """Lesion and identity record the network's error from their own forward pass (no second inference pass);
    it equals an independent evaluation, and its CI is the exact binomial one."""
    from scipy.stats import binomtest

    import resprobe.engine as E
    from resprobe.engine import evaluate
    ref = evaluate(twin("cifar_resnet20", 0).model, data, SPEC, "imagenet")
    monkeypatch.setattr(E, "predict", lambda *a, **k: pytest.fail("a second inference pass"))
    for study in (lambda s: identity.run([s], data, SPEC), lambda s: lesion.run([s], data, SPEC, lesion.LesionPlan("single"))):
        s = twin("cifar_resnet20", 0)
        study(s)
        c = s.competence
        ci = binomtest(ref["n_wrong"], ref["n_images"]).proportion_ci(method="exact")
        assert (c.error, c.n_images) == (ref["error"], 300) and (c.ci_low, c.ci_high) == pytest.approx((ci.low, ci.high))
        assert c.chance == pytest.approx(1 - max(data.labels.bincount()).item() / 300)


def test_competence_of_a_probe_without_its_own_pass_uses_a_bounded_sample(data, monkeypatch):
    """paths/amplify/gradcorr measure competence on a seeded subset of at most COMPETENCE_IMAGES images, equal to
    an independent evaluation of that subset."""
    from resprobe.engine import evaluate
    from resprobe.probes import common
    monkeypatch.setattr(common, "COMPETENCE_IMAGES", 100)
    s = twin("cifar_resnet20", 0)
    common.assess([s], data, SPEC)
    ref = evaluate(twin("cifar_resnet20", 0).model, data.subset(100), SPEC, "imagenet")
    assert s.competence.n_images == 100 and s.competence.error == ref["error"]
    assert common.known_competence(s, data)  # the subset counts for the whole data set: no second measurement
