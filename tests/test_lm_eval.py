"""``resprobe eval --data text:...``: a language model's next-token loss over document-tagged windows, equal to
an independent computation on the same windows, with a CI over documents; user errors in one line."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from resprobe.cli import main  # noqa: E402
from resprobe.io.text import load_text  # noqa: E402
from resprobe.models import build_model  # noqa: E402

SPEC = ("hf-config:llama(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=2, "
        "num_attention_heads=4, num_key_value_heads=2)")


def test_eval_on_text_equals_an_independent_loss(capsys):
    assert main(["eval", "--model", SPEC, "--random-init", "--data", "text:pydoc", "--seq-len", "16", "--limit",
                 "24", "--seed", "3", "--json", "--quiet", "--n-boot", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the statistic's definition, checked on a model held here (the CLI builds its own random one)
    from resprobe.loading import Access, load_model
    torch.manual_seed(0)
    model, _ = load_model(SPEC, None, Access(random_init=True, seed=3))
    data = load_text("text:pydoc", 16)
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))[:24].sort().values
    x, y = data.ids[keep][:, :-1], data.ids[keep][:, 1:]
    assert out["n_windows"] == 24 and out["seq_len"] == 16 and out["tokenizer"] == "bytes"
    assert out["loss_ci"][0] <= out["loss"] <= out["loss_ci"][1]
    assert 3.0 < out["loss"] < 8.0            # a random byte-level model: about ln 256 = 5.5
    with torch.no_grad():
        logits = model(input_ids=x).logits
    from resprobe.lm import evaluate_text
    from resprobe.engine import RunSpec
    from resprobe.io.text import TextData
    res = evaluate_text(model, TextData(data.ids[keep], data.docs[keep], data.names, "text:pydoc", "bytes"),
                        RunSpec(progress=False, n_boot=200))
    ref = F.cross_entropy(logits.reshape(-1, 256).double(), y.reshape(-1), reduction="mean")
    assert abs(res["loss"] - float(ref)) < 1e-6


def test_eval_on_text_user_errors(capsys):
    assert main(["eval", "--model", SPEC, "--data", "text:pydoc"]) == 2
    assert "--random-init" in capsys.readouterr().err
    small = SPEC.replace("vocab_size=256", "vocab_size=100")
    assert main(["eval", "--model", small, "--random-init", "--data", "text:pydoc", "--seq-len", "8"]) == 2
    assert "embedding holds 100" in capsys.readouterr().err
    assert main(["eval", "--model", SPEC, "--random-init", "--data", "text:/no/such/file.txt"]) == 2
    assert "not a file" in capsys.readouterr().err
    m = build_model(SPEC)
    assert m.get_input_embeddings().num_embeddings == 256


def test_non_finite_logits_are_one_line_not_a_nan_loss(capsys):
    from resprobe.engine import RunSpec
    from resprobe.errors import UserError
    from resprobe.io.text import TextData
    from resprobe.lm import evaluate_text
    model = build_model(SPEC)
    with torch.no_grad():
        model.lm_head.weight[3, 0] = float("nan")
    data = load_text("text:pydoc", 8)
    small = TextData(data.ids[:4], data.docs[:4], data.names, "text:pydoc", "bytes")
    with pytest.raises(UserError, match="not finite|non-finite|NaN"):
        evaluate_text(model, small, RunSpec(progress=False))
