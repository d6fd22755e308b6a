"""The language-model competence gate against adversarial subjects built from the zoo's twin LMs: only a
network that uses its context passes (loss below 3/4 of the unigram entropy of the tokens it is measured on).
A random initialisation, the collapsed plain twin (the unigram predictor), the plain twin's weights in the
residual decoder, branches scaled ×10 and a scrambled unembedding must fail; the trained residual twin passes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from resprobe.engine import RunSpec  # noqa: E402
from resprobe.io.text import load_text  # noqa: E402
from resprobe.lm import subset_windows  # noqa: E402
from resprobe.models import build_model  # noqa: E402
from resprobe.probes import lm_common  # noqa: E402
from resprobe.study import Subject  # noqa: E402

ZOO = Path(__file__).resolve().parents[1] / "zoo"
RES, PLAIN = "hf-config:resprobe_twin", "hf-config:resprobe_twin(residual=False)"
RUN = RunSpec(seed=0, n_boot=200, progress=False)


@pytest.fixture(scope="module")
def data():
    return subset_windows(load_text("text:pydoc@test", 128), 48, 0)


def _twin(spec, weights=None, seed=0):
    torch.manual_seed(seed)
    m = build_model(spec)
    if weights:
        m.load_state_dict(torch.load(ZOO / weights / "model.pt", weights_only=True))
    return m.eval()


def _scaled_branches(m):
    with torch.no_grad():
        for layer in m.model.layers:
            for proj in (layer.attn.proj, layer.mlp.proj):
                proj.weight.mul_(10), proj.bias.mul_(10)
    return m


def _scrambled_head(m):
    with torch.no_grad():
        w = m.get_output_embeddings().weight
        w.copy_(w[torch.randperm(w.shape[0], generator=torch.Generator().manual_seed(0))])
    return m


ADVERSARIES = {
    "random init": lambda: _twin(RES),
    "plain twin (collapsed to the unigram)": lambda: _twin(PLAIN, "lm_twin_plain"),
    "plain twin's weights in the residual decoder": lambda: _twin(RES, "lm_twin_plain"),
    "residual twin, branches x10": lambda: _scaled_branches(_twin(RES, "lm_twin_res")),
    "residual twin, unembedding rows shuffled": lambda: _scrambled_head(_twin(RES, "lm_twin_res")),
}


@pytest.mark.parametrize("name", list(ADVERSARIES))
def test_adversaries_are_not_competent(data, name):
    c = lm_common.text_competence(Subject(name, ADVERSARIES[name]()), data, RUN)
    assert not c.competent, c.describe()
    assert c.ci_high > c.bar


def test_the_trained_residual_twins_are_competent_and_the_unigram_is_the_floor_of_context_free_prediction(data):
    for w in ("lm_twin_res", "lm_twin_res_seed1", "lm_twin_res_seed2"):
        c = lm_common.text_competence(Subject(w, _twin(RES, w)), data, RUN)
        assert c.competent, c.describe()
    # The plain twin predicts from token frequencies only: its loss cannot beat the tokens' own unigram entropy
    c = lm_common.text_competence(Subject("plain", _twin(PLAIN, "lm_twin_plain")), data, RUN)
    assert c.error >= c.chance - 1e-9
