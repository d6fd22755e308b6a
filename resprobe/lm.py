"""Language models on text: the tokenizer of a loaded model, its token data, and its next-token loss with
confidence intervals over documents (``resprobe eval --data text:...``)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import distributed as dist
from .engine import RunSpec, check_finite
from .errors import UsageError
from .io.text import TextData, load_text
from .metrics.lm import document_ratio_ci, per_document, window_sums
from .progress import progress

__all__ = ["tokenizer_for", "text_for", "evaluate_text", "eval_text_command"]


def tokenizer_for(prov: dict):
    """The tokenizer saved beside a model's weights (``hf:`` folders, ``smollm2-135m``), else None (bytes)."""
    w = prov.get("weights")
    folder = Path(w).parent if w else None
    if folder is None or not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def text_for(model: nn.Module, prov: dict, spec: str, seq_len: int) -> TextData:
    """The windows of ``spec`` in the model's tokens (its tokenizer, else UTF-8 bytes), checked against its
    embedding."""
    tok = tokenizer_for(prov)
    vocab = model.get_input_embeddings().num_embeddings
    if tok is None:
        return load_text(spec, seq_len, None, "bytes", vocab)
    name = f"{type(tok).__name__} of {Path(str(getattr(tok, 'name_or_path', ''))).name or 'the model'}"
    return load_text(spec, seq_len, lambda t: tok(t, add_special_tokens=False)["input_ids"], name, vocab)


@torch.no_grad()
def evaluate_text(model: nn.Module, data: TextData, spec: RunSpec) -> dict:
    """Mean next-token loss (nats) and perplexity with 95% CIs that resample documents."""
    model.eval()
    rows = []
    with progress(len(data), "eval text", "windows", enabled=spec.progress) as bar:
        for s in range(0, len(data), spec.batch_size):
            x, y = data.inputs_and_targets(slice(s, s + spec.batch_size))
            logits = model(input_ids=x.to(spec.torch_device), use_cache=False).logits
            check_finite(logits, f"the logits of windows {s}..{s + len(x) - 1}", spec)
            rows.append(window_sums(logits, y.to(spec.torch_device)))
            bar.update(len(x))
    sums = torch.cat(rows).numpy()
    by_doc, _ = per_document(sums, data.docs.numpy())
    loss, lo, hi = document_ratio_ci(by_doc[:, 0], by_doc[:, 1], spec.n_boot, seed=spec.seed)
    return dict(loss=loss, loss_ci=[lo, hi], perplexity=float(np.exp(loss)), perplexity_ci=[float(np.exp(lo)),
                float(np.exp(hi))], **data.describe(), ci="95% percentile bootstrap over documents")


def eval_text_command(args, spec: RunSpec, access) -> int:
    """``resprobe eval --data text:...``: the model's loss on the windows (``--limit``: a seeded subset)."""
    from .loading import load_model
    from .models.lm import carries_weights
    if args.weights:
        raise UsageError("--weights does not apply to language models", "name the weights in the spec (hf:FOLDER)")
    if not carries_weights(args.model) and not access.random_init:
        raise UsageError(f"{args.model} has no weights: resprobe would evaluate a randomly initialised model",
                         "pass --random-init to evaluate one on purpose, or name weights (hf:FOLDER, smollm2-135m)")
    model, prov = load_model(args.model, None, access)
    data = text_for(model, prov, args.data, args.seq_len)
    if args.limit and args.limit < len(data):
        keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:args.limit].sort().values
        data = TextData(data.ids[keep], data.docs[keep], data.names, data.spec, data.tokenizer,
                        dict(limit=args.limit, subset_seed=args.seed))
    t0 = time.time()
    res = evaluate_text(model.to(spec.torch_device), data, spec)
    if not dist.is_main():
        return 0
    out = dict(res, model=args.model, weights=prov.get("weights"), weights_sha256=prov.get("weights_sha256"),
               seconds=round(time.time() - t0, 3))
    if args.json:
        from .io.tables import clean
        print(json.dumps(clean(out), allow_nan=False))
    else:
        lo, hi = res["loss_ci"]
        print(f"{args.model} on {args.data}: {res['n_windows']} windows of {res['seq_len']} tokens from "
              f"{res['n_documents']} documents ({res['tokenizer']} tokens): loss {res['loss']:.4f} nats "
              f"[{lo:.4f}, {hi:.4f}], perplexity {res['perplexity']:.2f}")
    return 0


