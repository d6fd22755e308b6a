"""Training language models with ``resprobe train`` on held-out documents (seeded, resumable exactly), the
trained twins probed by seed with their recipe, and the language-model report (``resprobe report --data
text:...``): its sections, and one-line errors."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")

from resprobe.cli import main  # noqa: E402

TINY = "hf-config:resprobe_twin(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32{})"
TRAIN = ["--data", "text:pydoc@train", "--test-data", "text:pydoc@test", "--seq-len", "32", "--limit", "48",
         "--test-limit", "16", "--optimizer", "adamw", "--lr", "3e-3", "--batch-size", "16", "--quiet"]


def _train(out, epochs, seed=0, residual=True, *extra):
    return main(["train", "--model", TINY.format("" if residual else ", residual=False"), *TRAIN, "--epochs",
                 str(epochs), "--seed", str(seed), "--out", str(out), *extra])


def test_training_on_text_is_seeded_and_resumes_exactly(tmp_path, monkeypatch):
    import resprobe.training as T
    assert _train(tmp_path / "a", 2) == 0
    orig = T._atomic_save

    def save_then_stop(obj, path):      # killed right after epoch 0's checkpoint
        orig(obj, path)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "_atomic_save", save_then_stop)
    assert _train(tmp_path / "b", 2) != 0           # the command reports the interruption
    monkeypatch.setattr(T, "_atomic_save", orig)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["epoch"] == 0
    assert _train(tmp_path / "b", 2, 0, True, "--resume") == 0
    a, b = (torch.load(tmp_path / x / "model.pt", weights_only=True) for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    m = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(m["epoch"]) == [0, 1] and m["test_loss"].notna().all() and (m["train_error"] <= 1).all()
    assert m["train_loss"].iloc[1] < m["train_loss"].iloc[0]
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["train_data"]["spec"] == "text:pydoc@train" and cfg["test_data"]["spec"] == "text:pydoc@test"
    assert cfg["seq_len"] == 32 and cfg["command"].startswith("resprobe")


def test_the_held_out_loss_is_the_models_own_loss(tmp_path):
    """The metrics' test loss equals the model's mean next-token loss on the held-out windows, independently."""
    from resprobe.io.text import load_text
    from resprobe.lm import subset_windows
    from resprobe.models import build_model
    assert _train(tmp_path / "a", 1) == 0
    m = build_model(TINY.format(""))
    m.load_state_dict(torch.load(tmp_path / "a" / "model.pt", weights_only=True))
    d = subset_windows(load_text("text:pydoc@test", 32), 16, 0)
    x, y = d.inputs_and_targets(slice(0, len(d)))
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(m.eval()(input_ids=x).logits.flatten(0, 1), y.flatten())
    assert pd.read_csv(tmp_path / "a" / "metrics.csv")["test_loss"].iloc[0] == pytest.approx(loss.item(), rel=1e-5)


def test_twins_are_paired_by_seed_with_their_recipe(tmp_path):
    from resprobe.api import Access
    from resprobe.lm import TextRequest, load_text_subjects
    from resprobe.study import roles_of
    from resprobe.verdict import contrasts
    for seed in (0, 1):
        assert _train(tmp_path / ("res" if seed == 0 else f"res_seed{seed}"), 1, seed) == 0
        assert _train(tmp_path / ("plain" if seed == 0 else f"plain_seed{seed}"), 1, seed, False) == 0
    w = lambda name: [str(tmp_path / name / "model.pt"), str(tmp_path / f"{name}_seed1" / "model.pt")]  # noqa: E731
    data, subs = load_text_subjects([TINY.format(""), TINY.format(", residual=False")], None, [w("res"), w("plain")],
                                    Access(), TextRequest("text:pydoc@test", 32, 8))
    assert [s.label for s in subs] == ["res/s0", "res/s1", "plain/s0", "plain/s1"]
    assert len({s.recipe for s in subs}) == 1 and subs[0].recipe is not None
    roles = roles_of(subs, {s.label: s.label.startswith("res") for s in subs}, {s.label: ((2,), 1) for s in subs})
    pairs = contrasts(roles)
    assert [[(r, p) for r, p, _ in ps] for ps in pairs] == [[("res/s0", "plain/s0"), ("res/s1", "plain/s1")]]


@pytest.mark.parametrize("argv,words", [
    (["--model", TINY.format(""), "--data", "text:pydoc@train", "--epochs", "1"], "held-out documents"),
    (["--model", TINY.format(""), "--data", "text:pydoc", "--test-data", "text:pydoc@test", "--epochs", "1"],
     "in both --data and --test-data"),
    (["--model", "cifar_resnet20", "--data", "text:pydoc@train", "--test-data", "text:pydoc@test", "--epochs", "1"],
     "not a language model"),
    (["--model", TINY.format(", max_position_embeddings=16"), "--data", "text:pydoc@train", "--test-data",
      "text:pydoc@test", "--seq-len", "32", "--epochs", "1"], "exceeds the model's 16 positions"),
])
def test_bad_training_requests_are_one_line(tmp_path, capsys, argv, words):
    assert main(["train", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("cmd", ["identity", "lesion", "eval", "report"])
def test_windows_longer_than_the_models_positions_are_refused_before_any_work(tmp_path, capsys, cmd):
    out = [] if cmd == "eval" else ["--out", str(tmp_path / "o")]
    assert main([cmd, "--model", TINY.format(", max_position_embeddings=16"), "--random-init", "--data",
                 "text:pydoc", "--seq-len", "17", *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seq-len 17 exceeds the model's 16 positions" in err[0] and "image" not in err[0], err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.csv"))


def test_the_language_model_report(tmp_path):
    spec = "hf-config:resprobe_twin(hidden_size=32, num_hidden_layers=4{})"
    assert main(["report", "--model", spec.format(""), "--plain", spec.format(", residual=False"), "--random-init",
                 "--data", "text:pydoc@test", "--seq-len", "32", "--limit", "24", "--quiet", "--out",
                 str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    keys = {k.split("#")[0] for k in rep["sections"]}
    assert {"lesion-single", "lesion-contrast", "paths", "identity-near", "amplify", "gradcorr"} <= keys
    assert all(s["verdict"] == "not applicable" for s in rep["sections"].values()), rep["sections"]
    assert not rep["failures"] and rep["provenance"]["data"]["n_windows"] == 24
    html = (tmp_path / "report.html").read_text()
    assert "language model" in html and html.count("<img") >= 6
    assert "token windows" in html and not re.search(r"\b\d+ images\b", html)   # what the scope counts
    assert "over images" not in html and "over documents" in html
    for f in ("lesion/lesion_lm_single.png", "identity/identity_lm_lens_positions.png", "paths/paths.png",
              "amplify/amplify_gains.png", "identity/identity_lm_branch_ratio.png"):
        assert (tmp_path / f).is_file(), f


def test_a_report_with_a_failed_study_says_so_and_exits_1(tmp_path, capsys, monkeypatch):
    """The other studies are written, the failure is one line on stderr and the exit status is not 0."""
    import resprobe.probes.amplify as A

    def broken(*a, **k):
        raise RuntimeError("amplify exploded")

    monkeypatch.setattr(A, "run", broken)
    spec = "hf-config:resprobe_twin(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)"
    assert main(["report", "--model", spec, "--random-init", "--data", "text:pydoc@test", "--seq-len", "16",
                 "--limit", "8", "--quiet", "--out", str(tmp_path)]) == 1
    err = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("resprobe:")]
    assert len(err) == 1 and "1 study failed (amplify)" in err[0], err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert "amplify exploded" in rep["failures"]["amplify"]["error"] and (tmp_path / "report.html").is_file()
    assert rep["sections"]["lesion-single"]["verdict"] == "not applicable"


def test_zoo_twins_load_by_name_and_only_as_what_they_were_trained(capsys):
    """``--weights zoo:lm_twin_res``: the zoo's twin decoder, refused in one line for its plain twin's spec."""
    assert main(["eval", "--model", "hf-config:resprobe_twin", "--weights", "zoo:lm_twin_res", "--data",
                 "text:pydoc@test", "--limit", "8", "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["loss"] < 2.0 and res["n_windows"] == 8        # trained: far below the 3.25 nats of unigram guessing
    assert main(["eval", "--model", "hf-config:resprobe_twin(residual=False)", "--weights", "zoo:lm_twin_res",
                 "--data", "text:pydoc@test", "--limit", "8", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a hf-config:resprobe_twin checkpoint" in err[0]


def test_the_full_budget_adds_the_pruning_rules(tmp_path):
    """``--budget full``: the lesion section also judges the pruning rules against the true single-deletion effects
    (the figure of similarity against effect)."""
    spec = "hf-config:resprobe_twin(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32)"
    assert main(["report", "--model", spec, "--random-init", "--data", "text:pydoc@test", "--seq-len", "16",
                 "--limit", "16", "--budget", "full", "--quiet", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lesion" / "lesion_lm_similarity.png").is_file()
    sim = pd.read_csv(tmp_path / "lesion" / "lesion.similarity.csv")
    assert len(sim) > 0
