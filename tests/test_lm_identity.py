"""Closeness to the identity and the logit lens on language models (resprobe.probes.lm_identity): every per-unit
measure equals one computed from the model's own modules through hooks, token by token; the lens equals decoding
the model's own hidden states with its final norm and unembedding; the command writes its files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from resprobe.engine import RunSpec  # noqa: E402
from resprobe.io.text import TextData, load_text  # noqa: E402
from resprobe.models import build_model  # noqa: E402
from resprobe.probes import lm_identity  # noqa: E402
from resprobe.study import Subject  # noqa: E402

SPEC = ("hf-config:llama(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=4, "
        "num_attention_heads=4, num_key_value_heads=2)")
RUN = RunSpec(batch_size=5, progress=False, n_boot=200)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(SPEC)
    for p in m.parameters():
        p.data.mul_(3)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    d = load_text("text:pydoc", 16, None, "bytes", 256)
    keep = torch.arange(0, len(d), len(d) // 20)[:20]
    return TextData(d.ids[keep], d.docs[keep], d.names, d.spec, d.tokenizer)


@pytest.fixture(scope="module")
def result(model, data):
    return lm_identity.run_text([Subject("m", model, "none", {})], data, RUN)


def _hooked(model, x):
    """Every sublayer's input and branch output, read from the model's own forward through hooks."""
    seen = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_pre_hook(lambda mod, a, kw, i=i: seen.__setitem__(("in", i), kw.get(
            "hidden_states", a[0] if a else None)), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(("attn", i),
                                                                                                     out[0])))
        hooks.append(layer.mlp.register_forward_hook(lambda mod, a, out, i=i: seen.__setitem__(("mlp", i), out)))
    try:
        with torch.no_grad():
            logits = model(input_ids=x, use_cache=False).logits
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


def test_per_unit_measures_equal_the_models_own_sublayers_token_by_token(model, data, result):
    x, _ = data.inputs_and_targets(slice(None))
    seen, _ = _hooked(model, x)
    t = result.table.set_index(["unit", "metric"])["value"]
    for i in range(4):
        h = seen[("in", i)].double()
        for part, xin, f in (("attn", h, seen[("attn", i)].double()),
                             ("mlp", h + seen[("attn", i)].double(), seen[("mlp", i)].double())):
            ratios, coss = [], []
            for w in range(len(x)):          # token by token
                for p in range(16):
                    a, b = xin[w, p], f[w, p]
                    ratios.append(float(b.norm() / a.norm()))
                    coss.append(float(a @ (a + b) / (a.norm() * (a + b).norm())))
            name = f"model.layers.{i}.{part}"
            assert t[(name, "branch_ratio")] == pytest.approx(np.mean(ratios), rel=1e-6)
            assert t[(name, "cos_in_out")] == pytest.approx(np.mean(coss), rel=1e-6)
            assert t[(name, "angular_distance")] == pytest.approx(np.mean(np.arccos(np.clip(coss, -1, 1)) / np.pi),
                                                                  rel=1e-6, abs=1e-9)
    tab = result.table
    assert ((tab["ci_low"] <= tab["value"] + 1e-12) & (tab["value"] <= tab["ci_high"] + 1e-12)).all()
    assert (tab["n_documents"] == data.n_documents).all()


def test_the_logit_lens_equals_decoding_the_models_hidden_states(model, data, result):
    x, y = data.inputs_and_targets(slice(None))
    with torch.no_grad():
        out = model(input_ids=x, output_hidden_states=True, use_cache=False)
        final = out.logits.double().log_softmax(-1)
        lens = result.detail.lens.set_index("layer")
        for layer in range(4):                 # hidden_states[l]: the stream before layer l
            lp = model.lm_head(model.model.norm(out.hidden_states[layer])).double().log_softmax(-1)
            kl = (final.exp() * (final - lp)).sum(-1)
            agree = (lp.argmax(-1) == final.argmax(-1)).double()
            nll = -lp.gather(-1, y.unsqueeze(-1)).squeeze(-1)
            assert lens.loc[layer, "kl"] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-6)
            assert lens.loc[layer, "agreement"] == pytest.approx(float(agree.mean()))
            assert lens.loc[layer, "loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    last = lens.loc[4]
    assert last["stream"] == "output" and last["agreement"] == 1 and last["kl"] == pytest.approx(0, abs=1e-6)


def test_positions_average_to_the_whole(result, data):
    pos = result.detail.positions
    t = result.table.set_index(["unit", "metric"])["value"]
    for (name, metric), g in pos[pos["kind"] == "unit"].groupby(["name", "metric"]):
        assert g["value"].mean() == pytest.approx(t[(name, metric)], rel=1e-9)
    assert set(pos["position"]) == set(range(16))


def test_the_command_writes_its_files(tmp_path):
    from resprobe.cli import main
    out = tmp_path / "o"
    assert main(["identity", "--model", SPEC, "--random-init", "--data", "text:pydoc", "--seq-len", "16", "--limit",
                 "12", "--quiet", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"identity.csv", "identity.lens.csv", "identity.positions.csv", "identity_lm_lens.png",
            "identity_lm_branch_ratio.png", "identity_lm_lens_positions.png", "report.html"} <= names
    meta = json.loads((out / "identity.json").read_text())
    assert meta["settings"]["text"]
    # a random network is judged by no one: the near-identity verdict is not applicable (competence gate)
    assert [v["verdict"] for v in meta["verdicts"]] == ["not applicable"]
    assert "not a competent predictor" in meta["verdicts"][0]["reason"]
