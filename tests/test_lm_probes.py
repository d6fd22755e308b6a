"""Issue 30 on language models, against independent computations: the twin decoder and its plain twin decompose
exactly; amplification's worst-case gains equal the spectral norm of the autograd Jacobian; the paths' routed
gradients sum over every routing to the model's own gradient at its embeddings (sequential and parallel
residual), and the path-length distribution is (1 + z)^2L or (1 + 2z)^L; the shattering lines' gradients equal
autograd through the model's own forward from ``inputs_embeds``; competence equals an explicit per-token count;
the verdicts come out on both sides of their margins, and random networks never get "supported"."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from resprobe.anatomy import anatomy  # noqa: E402
from resprobe.engine import RunSpec  # noqa: E402
from resprobe.io.text import TextData, held_out, load_text  # noqa: E402
from resprobe.models import build_model  # noqa: E402
from resprobe.probes import lm_amplify, lm_common, lm_gradcorr, lm_paths  # noqa: E402
from resprobe.probes.amplify import AmplifyOptions  # noqa: E402
from resprobe.probes.gradcorr import LineOptions  # noqa: E402
from resprobe.probes.lesion_plans import LesionConfig  # noqa: E402
from resprobe.probes.lm_lesion_verdicts import median_relative_increase, single_loss_verdicts  # noqa: E402
from resprobe.probes.paths import PathsOptions, path_length_distribution, unraveled_graph  # noqa: E402
from resprobe.study import Subject  # noqa: E402
from resprobe.verdict import Competence, Role  # noqa: E402

TWIN = "hf-config:resprobe_twin(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48{})"
LLAMA = ("hf-config:llama(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, "
         "num_attention_heads=4, num_key_value_heads=2)")
NEOX = ("hf-config:gpt_neox(vocab_size=256, hidden_size=16, intermediate_size=24, num_hidden_layers=3, "
        "num_attention_heads=2, use_parallel_residual=True)")
RUN = RunSpec(batch_size=4, progress=False, n_boot=200)


def _model(spec, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return build_model(spec).to(dtype).eval()


@pytest.fixture(scope="module")
def data():
    d = load_text("text:pydoc@test", 12, None, "bytes", 256)
    keep = torch.arange(0, len(d), len(d) // 12)[:12]
    return TextData(d.ids[keep], d.docs[keep], d.names, d.spec, d.tokenizer)


# --- the twin decoder --------------------------------------------------------------------------------------

@pytest.mark.parametrize("residual", [True, False])
def test_twin_decomposes_exactly_with_padding(residual):
    m = _model(TWIN.format(f", residual={residual}"), dtype=torch.float32)
    v = anatomy(m, (10,))
    assert len(v) == 4 and all(u.kind == ("residual" if residual else "plain") for u in v)
    x = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(1))
    x[1, :3] = -1
    with torch.no_grad():
        ref = m(input_ids=x.clamp_min(0), attention_mask=(x >= 0).long()).logits
        assert (v(x, decompose=True) - ref).abs().max() <= 1e-5 * ref.abs().max()
        hs = v.unit_inputs(x)
        for i in range(len(v) + 1):
            assert (v.run(hs[i], i) - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the plain twin really has no shortcut: its layer is MLP(LN(Attn(LN x))), independently
    if not residual:
        layer = m.model.layers[0]
        h = torch.randn(2, 10, 32)
        want = layer.mlp(layer.ln_2(layer.attn(layer.ln_1(h))))
        assert torch.allclose(layer(h), want)


def test_text_split_partitions_documents():
    all_, tr, te = (load_text(f"text:pydoc{s}", 64) for s in ("", "@train", "@test"))
    assert set(tr.names).isdisjoint(te.names) and set(tr.names) | set(te.names) == set(all_.names)
    assert all(held_out(n) for n in te.names) and not any(held_out(n) for n in tr.names)
    assert len(tr) + len(te) == len(all_) and 0.15 < len(te) / len(all_) < 0.35


# --- amplification -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [TWIN.format(""), TWIN.format(", residual=False"), LLAMA])
def test_worst_case_gains_equal_the_autograd_jacobian(spec, data):
    m = _model(spec)
    small = TextData(data.ids[:3], data.docs[:3], data.names, data.spec, data.tokenizer)
    values, view, _ = lm_amplify.profile_text(Subject("m", m), small, RUN, AmplifyOptions(eps=(1e-4,), power_iters=500))
    with torch.no_grad():
        hs = view.unit_inputs(small.inputs_and_targets(slice(0, 3))[0])
    for i, u in enumerate(view):
        for w in range(3):
            h = hs[i].detach()

            def branch(z, w=w):
                return u.branch(torch.cat([h[:w], z[None], h[w + 1:]]))[w]

            def unit(z, w=w):
                return view.run_unit(i, torch.cat([h[:w], z[None], h[w + 1:]]))[w]

            for fn, metric in ((branch, "worst_gain_branch"), (unit, "worst_gain_unit")):
                J = torch.autograd.functional.jacobian(fn, h[w]).reshape(h[w].numel(), -1)
                sigma = torch.linalg.matrix_norm(J, 2).item()
                assert values[(u.name, metric, None)][w] == pytest.approx(sigma, rel=1e-3), (spec, u.name, metric)
            f = u.branch(h)[w]
            kw = values[(u.name, "worst_gain_branch", None)][w] * h[w].norm() / f.norm()
            assert values[(u.name, "kappa_worst", None)][w] == pytest.approx(kw.item(), rel=1e-9)
            # a random direction never beats the worst case
            assert values[(u.name, "random_gain_branch", 1e-4)][w] <= values[(u.name, "worst_gain_branch", None)][w] \
                * (1 + 1e-6)


def test_a_branch_that_returns_zero_has_unit_gain_one(data):
    m = _model(TWIN.format(""))
    for layer in m.model.layers:
        layer.attn.proj.weight.data.zero_()
        layer.attn.proj.bias.data.zero_()
    values, view, _ = lm_amplify.profile_text(Subject("m", m), data, RUN, AmplifyOptions(eps=(1e-3,), power_iters=5))
    for u in view:
        if u.name.endswith("attn"):
            assert np.allclose(values[(u.name, "random_gain_unit", 1e-3)], 1, atol=1e-9)
            assert np.allclose(values[(u.name, "random_gain_branch", 1e-3)], 0)
            assert np.allclose(values[(u.name, "worst_gain_unit", None)], 1, atol=1e-6)


# --- paths -------------------------------------------------------------------------------------------------

def _embedding_gradient(m, x, y):
    e = m.get_input_embeddings()(x).detach().requires_grad_(True)
    out = m(inputs_embeds=e).logits
    (g,) = torch.autograd.grad(F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum"), e)
    return g


@pytest.mark.parametrize("spec,dist", [(LLAMA, [1, 4, 6, 4, 1]), (NEOX, [1, 6, 12, 8])])
def test_routed_gradients_sum_to_the_true_gradient(spec, dist, data):
    m = _model(spec)
    v = anatomy(m, (12,))
    assert path_length_distribution(unraveled_graph(v)) == dist       # (1 + z)^4 and (1 + 2z)^3
    x, y = data.inputs_and_targets(slice(0, 2))
    rb = lm_paths.TextRoutedBackward(v, x, y)
    choices = {u.index: max(1, len(u.parts.paths)) for u in v}
    routes = lm_paths.path_routes(choices, range(len(choices) + 1), 10 ** 6, 0)
    assert [len(routes[k]) for k in sorted(routes)] == dist             # every path enumerated once
    total = sum(rb.grad(dict(r)) for k in routes for r in routes[k])
    want = _embedding_gradient(m, x, y)
    assert torch.allclose(rb.true_grad(), want, atol=1e-9 * want.abs().max().item() + 1e-6)
    assert torch.allclose(total, want, atol=1e-9 * want.abs().max().item() + 1e-6)


def test_sampled_paths_are_uniform_over_paths_of_a_length():
    choices = {0: 2, 1: 1, 2: 2}                 # paths of length 1: 2 + 1 + 2 = 5
    routes = lm_paths.path_routes(choices, [1], 20000, 3)
    assert len(routes[1]) == 5
    sampled = lm_paths.path_routes(choices, [2], 4000, 3)[2]        # 2·1 + 2·2 + 1·2 = 8 paths of length 2
    counts = {r: sampled.count(r) for r in set(sampled)}
    assert len(counts) == 8 and max(counts.values()) / min(counts.values()) < 1.35


def test_paths_table_counts_parallel_paths(data):
    m = _model(NEOX, dtype=torch.float32)
    from resprobe.probes.paths import run as paths_run
    r = paths_run([Subject("neox", m)], data, RUN, PathsOptions(samples=4))
    assert list(r.table["n_paths"]) == [1, 6, 12, 8]
    assert r.summary["neox"]["typical_length"] == pytest.approx(2.0)     # 3 layers × 2/3
    assert r.verdicts[0].verdict == "not applicable"                       # a random network


# --- shattering --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["between", "direction"])
def test_line_gradients_equal_autograd_from_inputs_embeds(mode, data):
    m = _model(LLAMA)
    v = anatomy(m, (12,))
    opts = LineOptions(lines=2, points=16, mode=mode)
    a, b = lm_gradcorr.text_lines(data, opts, 0)[0]
    grads = lm_gradcorr.embedding_line_gradients(v, a, b, opts, 7, chunk=5)
    emb = m.get_input_embeddings()
    ea, eb = emb(a[:-1]).detach(), emb(b[:-1]).detach()
    if mode == "between":
        pts = [ea + (t / 16) * (eb - ea) for t in range(16)]
    else:
        u = torch.randn(ea.shape, generator=torch.Generator().manual_seed(7)).double()
        u = u / u.norm()
        pts = [ea + ((t / 16) * 2 - 1) * 0.1 * ea.norm() * u for t in range(16)]
    for t, p in enumerate(pts):
        e = p.clone().requires_grad_(True)
        out = m(inputs_embeds=e[None]).logits[0]
        (g,) = torch.autograd.grad(F.cross_entropy(out, a[1:], reduction="sum"), e)
        assert torch.allclose(grads[0][t], g, rtol=0, atol=1e-6 * g.abs().max().item()), (mode, t)
    assert len(grads) == 1 + len(v)


# --- competence and verdicts -------------------------------------------------------------------------------

def test_competence_is_the_loss_against_the_unigram_entropy_with_the_top1_error_beside(data):
    m = _model(LLAMA, dtype=torch.float32)
    c = lm_common.text_competence(Subject("m", m), data, RUN)
    x, y = data.inputs_and_targets(slice(0, len(data)))
    with torch.no_grad():
        logits = m(input_ids=x).logits.double()
    nll = [float(-torch.log_softmax(logits[i, t], -1)[y[i, t]]) for i in range(len(y)) for t in range(y.shape[1])]
    assert c.error == pytest.approx(sum(nll) / len(nll), rel=1e-6) and c.n_images == y.numel()
    counts = np.bincount(y.flatten().numpy())
    p = counts[counts > 0] / y.numel()
    assert c.chance == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12) and c.measure == "loss"
    wrong = sum(int(logits[i, t].argmax() != y[i, t]) for i in range(len(y)) for t in range(y.shape[1]))
    assert f"top-1 error {wrong / y.numel():.4f}" in c.note
    assert c.ci_low <= c.error <= c.ci_high and not c.competent      # a random model is far above the unigram
    assert c.error > c.chance


@pytest.mark.parametrize("high, competent", [(0.7499, True), (0.75, False), (0.7501, False)])
def test_the_language_model_gate_is_three_quarters_of_the_unigram_entropy(high, competent):
    """Both sides of the bar: the loss CI's upper end must lie below 3/4 of the unigram entropy (2.0 here)."""
    c = Competence(1.0, 0.9, high * 2.0, 2.0, 1000, "text:x", "loss")
    assert c.bar == pytest.approx(1.5) and c.competent is competent
    img = Competence(0.2, 0.1, high * 0.9, 0.9, 1000, "cifar10")   # images keep their own rule: half of chance
    assert img.bar == pytest.approx(0.45) and img.competent is False


def _role(group, seed, residual, recipe="r", error=0.2):
    return Role(group, seed, residual, recipe, Competence(error, error - 0.01, error + 0.01, 0.8, 1000, "text:x",
                                                         "loss"),
                ((4,), 100))


def _sums(inc: float, n_units: int, docs: np.ndarray, seed: int) -> tuple[dict, list]:
    """Window sums where every single deletion raises the loss by ``inc`` of the intact loss (with noise)."""
    rng = np.random.default_rng(seed)
    w = len(docs)
    base = np.stack([2.0 * 10 + rng.normal(0, 0.05, w), np.full(w, 10.0), np.zeros(w), np.zeros(w)], 1)
    configs = [LesionConfig("baseline")] + [LesionConfig("single", (i,), label=f"u{i}") for i in range(n_units)]
    sums = {configs[0].key(): base}
    for c in configs[1:]:
        s = base.copy()
        s[:, 0] = base[:, 0] * (1 + inc) + rng.normal(0, 0.05, w)
        sums[c.key()] = s
    return sums, configs


def test_median_relative_increase_against_a_direct_computation():
    docs = np.repeat(np.arange(10), 3)
    sums, configs = _sums(0.1, 5, docs, 0)
    m, lo, hi, n = median_relative_increase(sums, configs, docs, 300, 0)
    base = sums[configs[0].key()]
    direct = np.median([(sums[c.key()][:, 0].sum() - base[:, 0].sum()) / base[:, 0].sum() for c in configs[1:]])
    assert m == pytest.approx(direct) and lo <= m <= hi and n == 30


@pytest.mark.parametrize("res_inc,plain_inc,single,contrast", [
    (0.05, 0.9, "supported", "supported"),          # residual barely changes; plain far worse
    (0.6, 0.65, "not supported", "not supported"),  # both large, no difference
])
def test_lm_lesion_verdicts_on_both_sides(res_inc, plain_inc, single, contrast):
    docs = np.repeat(np.arange(12), 2)
    sums, configs, roles = {}, {}, {}
    for seed in range(3):
        for kind, inc in (("res", res_inc), ("plain", plain_inc)):
            lab = f"{kind}/s{seed}"
            sums[lab], configs[lab] = _sums(inc, 6, docs, seed)
            roles[lab] = _role(kind, seed, kind == "res")
    out = {v.key: v for v in single_loss_verdicts(sums, configs, docs, roles, RunSpec(n_boot=300))}
    assert out["lesion-single"].verdict == single
    assert out["lesion-contrast"].verdict == contrast
    # a network at chance is never judged
    roles = {k: _role(r.group, r.seed, r.residual, error=0.79) for k, r in roles.items()}
    assert all(v.verdict == "not applicable" for v in single_loss_verdicts(sums, configs, docs, roles, RunSpec(n_boot=300)))


@pytest.mark.parametrize("ratio,outcome", [(2.0, "supported"), (1.0, "not supported")])
def test_lm_amplifier_verdict_resamples_documents(ratio, outcome):
    from resprobe.probes.amplify_verdicts import amplifier_verdicts, resampler
    docs = np.repeat(np.arange(8), 4)
    draw = resampler(len(docs), docs)
    idx = draw(np.random.default_rng(0))
    assert len(idx) % 4 == 0 and all(len(set(docs[idx[i:i + 4]])) == 1 for i in range(0, len(idx), 4))
    rng = np.random.default_rng(1)
    per, roles = {}, {}
    for seed in range(3):
        base = {(f"u{j}", "random_gain_branch", 1e-4): rng.uniform(0.9, 1.1, len(docs)) for j in range(4)}
        per[f"p/s{seed}"] = base
        per[f"r/s{seed}"] = {k: v * ratio * rng.uniform(0.9, 1.1, len(docs)) for k, v in base.items()}
        roles[f"p/s{seed}"], roles[f"r/s{seed}"] = _role("p", seed, False), _role("r", seed, True)
    for d in per.values():
        for j in range(4):
            d[(f"u{j}", "kappa", 1e-4)] = d[(f"u{j}", "random_gain_branch", 1e-4)]
    v = amplifier_verdicts(roles, per, 1e-4, 300, 0, clusters=docs)[0]
    assert v.verdict == outcome and "over documents" in v.criterion


def test_random_language_models_are_never_supported(data):
    """Falsification: random initialisations of a residual LM and its twin get no verdict but "not applicable"."""
    from resprobe.probes import amplify, gradcorr, lesion, lm_identity, paths
    subs = [Subject("r", _model(TWIN.format(""), dtype=torch.float32)),
            Subject("p", _model(TWIN.format(", residual=False"), 1, torch.float32))]
    results = [lm_identity.run_text(subs[:1], data, RUN),
               amplify.run(subs, data, RUN, AmplifyOptions(eps=(1e-3,), power_iters=3)),
               paths.run(subs, data, RUN, PathsOptions(samples=2)),
               gradcorr.run(subs, data, RUN, LineOptions(lines=2, points=16)),
               lesion.run(subs, data, RUN)]
    verdicts = [v for r in results for v in r.verdicts]
    assert len(verdicts) >= 6 and all(v.verdict == "not applicable" for v in verdicts)
    assert any("not a competent predictor" in v.reason for v in verdicts)





def test_sums_over_ranks_count_a_missing_key_as_zero():
    """A rank without a batch (more ranks than batches) adds nothing, instead of failing on a missing key."""
    from resprobe.distributed import _sum
    got = _sum([{"a": np.ones(2)}, {}, {"a": np.ones(2), "b": 1.0}])
    assert np.array_equal(got["a"], [2, 2]) and got["b"] == 1.0
