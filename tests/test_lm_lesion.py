"""Lesions on language models (resprobe.probes.lm_lesion, painters, lm_prune): every mode equals naive surgery on
a copy of the model, window for window; the statistics equal independent computations (explicit per-token loops,
exact enumeration of the sign-flip test, scipy's Spearman); the pruning metrics equal those computed from the
model's own hidden states; the command line writes the files and resumes."""
from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from lmsurgery import Zero  # noqa: E402

from resprobe.anatomy import anatomy  # noqa: E402
from resprobe.engine import RunSpec  # noqa: E402
from resprobe.io.text import TextData, load_text  # noqa: E402
from resprobe.metrics.lm import document_ratio_ci, document_spearman_ci, per_document, sign_flip_p  # noqa: E402
from resprobe.models import build_model  # noqa: E402
from resprobe.probes import lm_lesion, lm_prune  # noqa: E402
from resprobe.probes.lesion_plans import LesionConfig, LesionPlan, make_configs  # noqa: E402
from resprobe.study import Subject  # noqa: E402

SPEC = ("hf-config:llama(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=6, "
        "num_attention_heads=4, num_key_value_heads=2)")
SPEC_ARGS = ["--model", SPEC, "--random-init", "--data", "text:pydoc", "--seq-len", "16", "--limit", "24", "--quiet"]
RUN = RunSpec(batch_size=5, progress=False, n_boot=200)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(SPEC)
    for p in m.parameters():   # larger weights: edits change the loss visibly
        p.data.mul_(3)
    return m.eval()


@pytest.fixture(scope="module")
def data():
    d = load_text("text:pydoc", 16, None, "bytes", 256)
    keep = torch.arange(0, len(d), len(d) // 24)[:24]
    return TextData(d.ids[keep], d.docs[keep], d.names, d.spec, d.tokenizer)


class _Parallel(nn.Module):
    """Painters' parallel layers, written directly: every layer on the same input, outputs averaged or updates
    summed."""

    def __init__(self, layers, mode):
        super().__init__()
        self.layers, self.mode = nn.ModuleList(layers), mode

    def forward(self, hidden_states, *args, **kwargs):
        outs = [lay(hidden_states, *args, **kwargs) for lay in self.layers]
        outs = [o[0] if isinstance(o, tuple) else o for o in outs]
        if self.mode == "mean":
            return torch.stack(outs).mean(0)
        return hidden_states + sum(o - hidden_states for o in outs)


def _surgery(m: nn.Module, c: LesionConfig) -> nn.Module:
    """A copy of the model edited by hand as the configuration says (unit 2ℓ: layer ℓ's attention, 2ℓ + 1 its
    MLP; a branch is its norm and its module)."""
    cp = copy.deepcopy(m)
    layers = list(cp.model.layers)
    orig = m.model.layers
    for u in c.deleted:
        setattr(layers[u // 2], "self_attn" if u % 2 == 0 else "mlp", Zero(u % 2 == 0))
    for i, j in enumerate(c.order or ()):
        if i != j:
            names = ("input_layernorm", "self_attn") if i % 2 == 0 else ("post_attention_layernorm", "mlp")
            for n in names:
                setattr(layers[i // 2], n, copy.deepcopy(getattr(orig[j // 2], n)))
    for a, b, mode, _ in c.parallel:
        la, lb = a // 2, b // 2
        layers = layers[:la] + [_Parallel(layers[la:lb + 1], mode)] + layers[lb + 1:]
    cp.model.layers = nn.ModuleList(layers)
    cp.config.num_hidden_layers = len(layers)
    return cp


def _logits(m: nn.Module, data: TextData) -> torch.Tensor:
    x, _ = data.inputs_and_targets(slice(None))
    with torch.no_grad():
        return m(input_ids=x, use_cache=False).logits


def _window_losses(m: nn.Module, data: TextData) -> np.ndarray:
    _, y = data.inputs_and_targets(slice(None))
    return F.cross_entropy(_logits(m, data).transpose(1, 2), y, reduction="none").sum(1).double().numpy()


PLANS = [LesionPlan("single"), LesionPlan("single", granularity="block"), LesionPlan("set", units=("model.layers.2",
         "model.layers.3.mlp")), LesionPlan("random-k", ks=(3,), samples=2), LesionPlan("reorder", ks=(2,), samples=2),
         LesionPlan("skip", ks=(1, 3)), LesionPlan("parallel", ks=(2, 4)), LesionPlan("repeat", ks=(3,)),
         LesionPlan("middle-reversed", ks=(2, 4))]


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.mode.value}-{p.granularity}")
def test_every_mode_equals_naive_surgery_window_for_window(model, data, plan):
    view = anatomy(model, (16,))
    configs = make_configs(view, plan, seed=3)
    assert len(configs) > 1 and all(c.runnable for c in configs)
    got = lm_lesion.text_sweep(view, data, configs, RUN)
    intact = _window_losses(model, data)
    changed = 0
    for c, sums in zip(configs, got):
        ref = _window_losses(_surgery(model, c), data)
        np.testing.assert_allclose(sums[:, 0], ref, rtol=2e-5, atol=1e-4)
        assert (sums[:, 1] == 16).all()
        changed += not np.allclose(ref, intact, atol=1e-3)
    assert changed == len(configs) - 1   # every edit changed the model (the baseline did not)
    # token for token: the prefix engine's logits (all windows in one batch) against the copy's
    from resprobe.probes.lesion_sweep import stream_logits
    x, _ = data.inputs_and_targets(slice(None))
    order = sorted(range(len(configs)), key=lambda i: configs[i].signature(len(view)))
    with torch.no_grad():
        for ci, logits in stream_logits(view, x, configs, order):
            ref = _logits(_surgery(model, configs[ci]), data)
            assert float((logits - ref).abs().max() / ref.abs().max()) <= 1e-5, configs[ci].key()


def test_painters_ranges_are_centred_and_keep_the_first_and_last_layer(model):
    view = anatomy(model, (16,))
    for mode in ("skip", "repeat", "middle-reversed"):
        for c in make_configs(view, LesionPlan(mode), 0)[1:]:
            ends = [int(b.rsplit(".", 1)[1]) for b in c.label.split("..")]
            layers = list(range(ends[0], ends[-1] + 1))
            assert len(layers) == c.k and 0 not in layers and 5 not in layers
            assert {i // 2 for i in c.edits().touched()} <= set(layers)
            assert abs((layers[0] - 1) - (4 - layers[-1])) <= 1   # centred among layers 1..4
    rev = make_configs(view, LesionPlan("middle-reversed", ks=(4,)), 0)[1]
    assert rev.order[2:10] == (8, 9, 6, 7, 4, 5, 2, 3)
    rep = make_configs(view, LesionPlan("repeat", ks=(3,)), 0)[1]
    assert rep.order[2:8] == (4, 5, 4, 5, 4, 5)


def test_rows_equal_explicit_per_token_computations(model, data):
    view = anatomy(model, (16,))
    configs = make_configs(view, LesionPlan("set", units=("model.layers.1",)), 0)
    sums = {c.key(): s for c, s in zip(configs, lm_lesion.text_sweep(view, data, configs, RUN))}
    docs = data.docs.numpy()
    [base_row, row] = lm_lesion.rows_for(configs, sums, docs, dict(label="m", seed=0, n_boot=300, run=""))
    x, y = data.inputs_and_targets(slice(None))
    with torch.no_grad():
        p = model(input_ids=x, use_cache=False).logits.double().log_softmax(-1)
        q = _surgery(model, configs[1])(input_ids=x, use_cache=False).logits.double().log_softmax(-1)
    agree = kl = nll = 0.0
    for w, t in itertools.product(range(len(x)), range(16)):   # token by token
        agree += float(p[w, t].argmax() == q[w, t].argmax())
        kl += float((p[w, t].exp() * (p[w, t] - q[w, t])).sum())
        nll += float(-q[w, t, y[w, t]])
    n = len(x) * 16
    assert row["agreement"] == pytest.approx(agree / n) and row["kl"] == pytest.approx(kl / n, rel=1e-4)
    assert row["loss"] == pytest.approx(nll / n, rel=1e-5) and row["perplexity"] == pytest.approx(np.exp(nll / n), rel=1e-5)
    assert row["delta_loss"] == pytest.approx(row["loss"] - base_row["loss"], abs=1e-9)
    assert base_row["agreement"] == 1 and base_row["kl"] == 0 and base_row["delta_loss"] == 0
    # the paired CI resamples documents: the same resamples of the per-document differences
    d = per_document(sums[configs[1].key()], docs)[0]
    b = per_document(sums[configs[0].key()], docs)[0]
    from resprobe.metrics.stats import stable_seed
    ref = document_ratio_ci(d[:, 0] - b[:, 0], d[:, 1], 300, seed=stable_seed(0, configs[1].key()))
    assert (row["delta_loss"], row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx(ref)
    assert row["n_documents"] == len(np.unique(docs)) and row["n_windows"] == len(data)


def test_sign_flip_p_matches_exact_enumeration():
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1, size=9)
    signs = np.array(list(itertools.product([-1, 1], repeat=9)))
    exact = float((np.abs(signs @ d) >= abs(d.sum()) - 1e-12).mean())
    assert sign_flip_p(d, 20000, seed=1) == pytest.approx(exact, abs=0.01)
    assert sign_flip_p(np.zeros(5)) == 1.0
    assert sign_flip_p(np.full(12, 0.5), 2000) < 0.001 + 1 / 2001 + 1e-9   # all one way: only ±all flips tie


def test_document_spearman_equals_scipy_and_its_ci_resamples_documents():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(2)
    xn, yn = rng.random((7, 5)), rng.random((7, 5))
    xd, yd = rng.random((7, 5)) + 1, rng.random((7, 5)) + 1
    rho, lo, hi = document_spearman_ci((xn, xd), (yn, yd), 400, seed=0)
    assert rho == pytest.approx(spearmanr(xn.sum(0) / xd.sum(0), yn.sum(0) / yd.sum(0)).statistic)
    assert -1 <= lo <= hi <= 1
    same = document_spearman_ci((xn, xd), (xn, xd), 200)
    assert same[0] == pytest.approx(1) and same[1] == pytest.approx(1)


def test_pruning_metrics_equal_those_of_the_models_own_hidden_states(model, data):
    view = anatomy(model, (16,))
    sim = lm_prune.similarity_sums(view, data, RUN, (1, 2))
    x, _ = data.inputs_and_targets(slice(None))
    with torch.no_grad():
        hs = model(input_ids=x, output_hidden_states=True, use_cache=False).hidden_states
    # hidden_states[l] is layer l's input; the last one is after the final norm: the head's input is the one
    # before it plus the last layer's update, which the model does not return: compare the layers it does
    streams = [h.double() for h in hs[:-1]]
    for n in (1, 2):
        for s in range(len(streams) - n):
            a, b = streams[s], streams[s + n]
            cos = F.cosine_similarity(a, b, dim=-1).clamp(-1, 1)
            ang = torch.arccos(cos) / np.pi
            np.testing.assert_allclose(sim[f"gromov-last|{n}"][:, s], ang[:, -1].numpy(), atol=1e-6)
            np.testing.assert_allclose(sim[f"gromov-all|{n}"][:, s], ang.sum(1).numpy(), atol=1e-5)
    for s in range(len(streams) - 1):
        bi = 1 - F.cosine_similarity(streams[s], streams[s + 1], dim=-1)
        np.testing.assert_allclose(sim["shortgpt-bi"][:, s], bi.sum(1).numpy(), atol=1e-5)


def test_pruning_judgment_names_each_rule_and_beats_nothing_by_construction(model, data):
    s = Subject("m", model, "none", {"model": SPEC})
    r = lm_prune.run_text([s], data, RUN, lm_prune.PruneTextOptions(ns=(1, 2), samples=4))
    j = r.detail.tables["pruning"]
    assert set(j["rule"]) == set(lm_prune.RULES) and set(j["n"]) == {1, 2}
    c = r.detail.tables["correlations"]
    assert set(c["rule"]) == set(lm_prune.RULES) and ((c["ci_low"] <= c["spearman"]) & (c["spearman"] <= c["ci_high"])).all()
    t = r.table
    single = t[(t["mode"] == "single")]
    assert len(single) == 6 + 12   # every layer and every sublayer deleted alone
    # the oracle of n = 1 is the layer whose single deletion costs least
    layers = single[~single["deleted"].str.contains(r"\.(?:attn|mlp)$")]
    best = layers.loc[layers["delta_loss"].idxmin(), "deleted"]
    oracle = t[(t["mode"] == "prune") & (t["k"] == 1) & t["note"].str.contains("oracle-layers")]
    assert len(oracle) == 1 and oracle["deleted"].iloc[0] == "+".join(f"{best}.{p}" for p in ("attn", "mlp"))
    assert j[j["n"] == 1]["oracle_layers"].iloc[0] == pytest.approx(layers["delta_loss"].min())


def test_a_branch_that_computes_nothing_costs_nothing(model, data):
    """Falsification: a layer whose attention output projection is zero contributes nothing, so deleting that
    attention changes no window: loss increase 0, agreement 1, paired p = 1."""
    m = copy.deepcopy(model)
    m.model.layers[2].self_attn.o_proj.weight.data.zero_()
    s = Subject("m", m, "none", {"model": SPEC})
    r = lm_lesion.run_text([s], data, RUN, LesionPlan("set", units=("model.layers.2.attn",)))
    row = r.table[r.table["mode"] == "set"].iloc[0]
    assert row["delta_loss"] == 0 and row["agreement"] == 1 and row["p_paired"] == 1 and row["kl"] == pytest.approx(0, abs=1e-7)


def test_the_command_writes_its_files_and_resumes(tmp_path, capsys):
    from resprobe.cli import main
    out = tmp_path / "o"
    assert main(["lesion", *SPEC_ARGS, "--mode", "skip", "--k", "1:2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"lesion.csv", "lesion.json", "report.html", "lesion_lm_painters.png", "lesion.text.npz"} <= names
    first = (out / "lesion.csv").read_text()
    meta = json.loads((out / "lesion.json").read_text())
    assert meta["provenance"]["data"]["n_windows"] == 24 and meta["settings"]["text"]
    capsys.readouterr()
    loud = [a for a in SPEC_ARGS if a != "--quiet"]
    assert main(["lesion", *loud, "--mode", "skip", "--k", "1:2", "--out", str(out)]) == 0
    assert "3 configurations reused" in capsys.readouterr().err
    assert (out / "lesion.csv").read_text() == first


@pytest.mark.parametrize("argv,words", [
    (["prune", *SPEC_ARGS], "does not run on language models"),
    (["lesion", "--model", "cifar_resnet20", "--random-init", "--data", "synthetic", "--seq-len", "8"], "text data"),
    (["lesion", *SPEC_ARGS, "--mode", "skip", "--k", "5"], "1..4 middle blocks"),
    (["lesion", "--model", SPEC, "--data", "text:pydoc", "--seq-len", "16"], "--random-init"),
    (["lesion", "--model", "smollm2-135m", "--data", "text:pydoc", "--weights", "x.pt"], "--weights does not apply"),
])
def test_bad_requests_are_one_line(tmp_path, capsys, argv, words):
    from resprobe.cli import main
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_bfloat16_runs_the_network_in_bf16_and_the_statistics_in_float(model, data):
    view = anatomy(model, (16,))
    configs = make_configs(view, LesionPlan("skip", ks=(2,)), 0)
    f32 = lm_lesion.text_sweep(view, data, configs, RUN)
    bf16 = lm_lesion.text_sweep(view, data, configs, RUN.replace(dtype="bfloat16"))
    for a, b in zip(f32, bf16):
        assert b.dtype == np.float64 and np.isfinite(b).all()
        assert not np.array_equal(a[:, 0], b[:, 0])            # the network did run in bf16
        np.testing.assert_allclose(b[:, 0], a[:, 0], rtol=0.03)  # and the loss is close


def test_runs_of_several_modes_share_a_folder(tmp_path):
    from resprobe.cli import main
    import pandas as pd
    out = tmp_path / "o"
    assert main(["lesion", *SPEC_ARGS, "--mode", "skip", "--k", "2", "--out", str(out)]) == 0
    assert main(["lesion", *SPEC_ARGS, "--mode", "repeat", "--k", "3", "--out", str(out)]) == 0
    t = pd.read_csv(out / "lesion.csv")
    assert sorted(t["mode"]) == ["baseline", "repeat", "skip"]
    import numpy as np_
    with np_.load(out / "lesion.text.npz") as z:
        assert len({k.split("\x1f")[1] for k in z.files}) == 2   # both runs' sums kept


def test_an_hf_folder_runs_like_its_config(tmp_path, model):
    """``hf:FOLDER`` (safetensors, no tokenizer: bytes) gives the rows of the same model held in memory."""
    from resprobe.cli import main
    import pandas as pd
    model.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "o"
    assert main(["lesion", "--model", f"hf:{tmp_path / 'tiny'}", "--data", "text:pydoc", "--seq-len", "16", "--limit",
                 "24", "--quiet", "--mode", "middle-reversed", "--k", "2", "--out", str(out)]) == 0
    t = pd.read_csv(out / "lesion.csv")
    assert set(t["model"]) == {"tiny"} and {"report.html", "lesion_lm_painters.png"} <= {p.name for p in out.iterdir()}
    from resprobe.lm import subset_windows
    d = subset_windows(load_text("text:pydoc", 16, None, "bytes", 256), 24, 0)
    r = lm_lesion.run_text([Subject("tiny", model, "none", {})], d, RUN, LesionPlan("middle-reversed", ks=(2,)))
    np.testing.assert_allclose(t["loss"].to_numpy(), r.table["loss"].to_numpy(), rtol=1e-9)


def test_pruning_resumes_from_its_store(tmp_path, capsys):
    from resprobe.cli import main
    out = tmp_path / "o"
    args = ["lesion", *[a for a in SPEC_ARGS if a != "--quiet"], "--mode", "prune-by-similarity", "--k", "1",
            "--samples", "2", "--out", str(out)]
    assert main(args) == 0
    first = (out / "lesion.csv").read_text()
    assert {"lesion.similarity.csv", "lesion.correlations.csv", "lesion.pruning.csv", "lesion_lm_similarity.png"} <= \
        {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "configurations reused" in err and (out / "lesion.csv").read_text() == first


@pytest.mark.parametrize("spec,attn", [
    ("hf-config:gpt_neox(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=3, "
     "num_attention_heads=4, use_parallel_residual=true, rotary_pct=0.5)", "attention"),
    ("hf-config:phi(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4)",
     "self_attn")])
def test_a_parallel_residual_layer_loses_its_attention_or_its_mlp_alone(spec, attn, data):
    """x + attn(ln x) + mlp(ln' x) is one unit with two paths: single deletions also drop each path alone, and each
    equals a copy whose attention (or MLP) returns zeros."""
    torch.manual_seed(0)
    m = build_model(spec).eval()
    for p in m.parameters():
        p.data.mul_(3)
    view = anatomy(m, (16,))
    configs = make_configs(view, LesionPlan("single"), 0)
    paths = [c for c in configs if c.drop]
    assert [c.label for c in paths] == [f"{u.name}:{p}" for u in view for p in ("attn", "mlp")]
    got = {c.key(): s for c, s in zip(configs, lm_lesion.text_sweep(view, data, configs, RUN))}
    intact = _window_losses(m, data)
    for c in paths:
        (i, path), = c.drop
        cp = copy.deepcopy(m)
        layer = (cp.base_model.layers if hasattr(cp.base_model, "layers") else cp.base_model.h)[i]
        setattr(layer, attn if path == "attn" else "mlp", Zero(path == "attn"))
        ref = _window_losses(cp, data)
        np.testing.assert_allclose(got[c.key()][:, 0], ref, rtol=2e-5, atol=1e-4)
        assert not np.allclose(ref, intact, atol=1e-3)   # the path mattered


def test_a_model_placed_by_a_device_map_with_disk_offload_gives_the_same_rows(tmp_path, model, data):
    """``--device-map MAP.json`` with layers offloaded to disk (accelerate loads each one's weights when it runs):
    the decomposition stays exact and the lesion rows equal those of the model held in memory."""
    from resprobe.cli import main
    import pandas as pd
    model.save_pretrained(tmp_path / "tiny")
    layout = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    layout.update({f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(6)})
    (tmp_path / "map.json").write_text(json.dumps(layout))
    out = tmp_path / "o"
    assert main(["lesion", "--model", f"hf:{tmp_path / 'tiny'}", "--data", "text:pydoc", "--seq-len", "16", "--limit",
                 "24", "--quiet", "--mode", "skip", "--k", "2", "--device-map", str(tmp_path / "map.json"),
                 "--offload-folder", str(tmp_path / "off"), "--out", str(out)]) == 0
    t = pd.read_csv(out / "lesion.csv")
    from resprobe.lm import subset_windows
    d = subset_windows(load_text("text:pydoc", 16, None, "bytes", 256), 24, 0)
    r = lm_lesion.run_text([Subject("tiny", model, "none", {})], d, RUN, LesionPlan("skip", ks=(2,)))
    np.testing.assert_allclose(t["loss"].to_numpy(), r.table["loss"].to_numpy(), rtol=1e-9)
    placed = build_model(f"hf:{tmp_path / 'tiny'}(device_map='{tmp_path / 'map.json'}', "
                         f"offload_folder='{tmp_path / 'off'}')")
    assert all(p.device.type == "meta" for p in placed.model.layers[1].parameters())   # on disk until it runs


@pytest.mark.parametrize("argv,words", [
    (["--model", "cifar_resnet20", "--random-init", "--data", "synthetic", "--device-map", "auto"], "--device-map applies"),
    (["--model", SPEC, "--random-init", "--data", "text:pydoc", "--seq-len", "16", "--device-map", "auto"],
     "--device-map applies"),
])
def test_device_map_errors_are_one_line(tmp_path, capsys, argv, words):
    from resprobe.cli import main
    assert main(["lesion", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["target", "other"])
def test_window_sums_are_non_finite_whenever_a_logit_is(bad, where):
    """The sweep checks the finiteness of the per-window sums instead of the logits: that needs every
    non-finite logit, at the target token or any other, to make the loss or KL sum non-finite (against a finite
    intact reference)."""
    from resprobe.metrics.lm import reference, window_sums
    g = torch.Generator().manual_seed(0)
    intact = torch.randn(2, 3, 7, generator=g)
    y = torch.randint(0, 7, (2, 3), generator=g)
    logits = torch.randn(2, 3, 7, generator=g)
    assert torch.isfinite(window_sums(logits, y, reference(intact))).all()
    v = int(y[1, 2]) if where == "target" else (int(y[1, 2]) + 1) % 7
    logits[1, 2, v] = bad
    s = window_sums(logits, y, reference(intact))
    assert torch.isfinite(s[0]).all() and not torch.isfinite(s[1, [0, 3]]).all()
