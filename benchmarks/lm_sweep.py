"""The all-units single-deletion sweep of a language model: the prefix engine against the naive sweep, in one run.

    python benchmarks/lm_sweep.py                          # smollm2-135m, 8 pydoc windows of 128 tokens
    python benchmarks/lm_sweep.py --windows 16 --seq-len 64
    python benchmarks/lm_sweep.py --model "hf-config:llama(...)" --random-init

Ours: :func:`resprobe.probes.lm_lesion.text_sweep` over every single deletion (each configuration from its
first modified unit; the intact model's unit inputs computed once per batch). Naive: for each configuration the
deleted attention or MLP module is swapped for one that returns zeros and the model's own forward runs in full —
what a script without the anatomy does. Both compute the same four window sums (loss, tokens, agreement, KL) with
the intact model's reference computed once per batch, and their sums are checked equal before any timing is
printed.

Printed: both times, their ratio, and two ideals for the ratio. The issue's FLOP ideal ``(n/2 + 1)/(n + 1)``
counts the head as one unit; the weighted ideal counts each unit and the head by their multiply-adds per token
(their weights' sizes: the unembedding of a 49k vocabulary costs as much as ~16 sublayers of SmolLM2), which is
what a perfect prefix reuse could reach. Peak resident memory of each phase is sampled every 20 ms.

Each of ``--pairs`` pairs times both sweeps back to back, in alternating order (this machine drifts by several
per cent between minutes); printed: every pair's ratio, their mean with a 95% t interval, and the median.

Target (issue 29): at most 10% above the ideal.
"""
from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch
import torch.nn as nn


class _Peak:
    """Peak resident memory of this process during a ``with`` block (sampled from /proc every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


class _Zero(nn.Module):
    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, *args, **kwargs):
        z = torch.zeros_like(hidden_states)
        return (z, None) if self.attention else z


def _naive(model, view, data, configs, batch: int):
    from resprobe.metrics.lm import reference, window_sums
    out = [np.zeros((len(data), 4)) for _ in configs]
    layers = model.model.layers
    with torch.no_grad():
        for s in range(0, len(data), batch):
            x, y = data.inputs_and_targets(slice(s, s + batch))
            ref = reference(model(input_ids=x, use_cache=False).logits)
            for ci, c in enumerate(configs):
                saved = []
                for u in c.deleted:
                    layer, name = layers[u // 2], ("self_attn" if view[u].part == "attn" else "mlp")
                    saved.append((layer, name, getattr(layer, name)))
                    setattr(layer, name, _Zero(name == "self_attn"))
                try:
                    logits = model(input_ids=x, use_cache=False).logits
                finally:
                    for layer, name, mod in saved:
                        setattr(layer, name, mod)
                out[ci][s:s + len(x)] = window_sums(logits, y, ref).numpy()
    return out


def _ideals(view, model, configs) -> tuple[float, float]:
    n = len(view)
    flop = (n / 2 + 1) / (n + 1)
    cost = np.array([sum(p.numel() for p in u.params() if p.dim() > 1) for u in view], float)
    head = float(model.get_output_embeddings().weight.numel())
    full = cost.sum() + head
    ours = sum((cost[min(c.deleted):].sum() if c.deleted else 0.0) + head for c in configs)
    return flop, ours / (len(configs) * full)


def _measured_ideal(view, model, data, configs, batch: int, reps: int = 3) -> tuple[float, dict]:
    """The ideal ratio from part costs measured on one batch here (the fastest of ``reps`` runs each): every
    unit on its input, the head, the statistics of one configuration, the intact reference. A perfect prefix reuse
    pays, per configuration, the units after the first one it deletes, the head and the statistics (and the intact
    run and reference once per batch); the naive sweep pays every unit, the head and the statistics per
    configuration (and the reference once)."""
    from resprobe.anatomy.view import NO_EDITS
    from resprobe.metrics.lm import reference, window_sums
    x, y = data.inputs_and_targets(slice(0, min(batch, len(data))))

    def best(f):
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return min(ts)
    with torch.no_grad():
        hs = view.unit_inputs(x)
        unit = np.array([best(lambda i=i: view.step(i, hs[i], NO_EDITS)) for i in range(len(view))])
        logits = view.head(hs[-1])
        ref = reference(logits)
        t = dict(units=float(unit.sum()), head=best(lambda: view.head(hs[-1])), ref=best(lambda: reference(logits)),
                 stats=best(lambda: window_sums(logits, y, ref)),
                 model=best(lambda: model(input_ids=x, use_cache=False).logits))
    fixed = t["head"] + t["stats"]
    ours = t["units"] + t["head"] + t["ref"] + sum(unit[min(c.deleted) + 1:].sum() + fixed
                                                   for c in configs if c.deleted)
    naive = t["ref"] + len(configs) * (t["units"] + fixed)
    return float(ours / naive), t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=1, help="timed pairs (ours and naive, in alternating order)")
    args = ap.parse_args()
    from resprobe.anatomy import anatomy
    from resprobe.engine import RunSpec
    from resprobe.lm import subset_windows, text_for
    from resprobe.loading import Access, load_model
    from resprobe.probes.lesion_plans import LesionPlan, make_configs
    from resprobe.probes.lm_lesion import text_sweep
    model, prov = load_model(args.model, None, Access(random_init=args.random_init))
    data = subset_windows(text_for(model, prov, "text:pydoc", args.seq_len), args.windows, 0)
    view = anatomy(model, (args.seq_len,))
    configs = make_configs(view, LesionPlan("single"))
    print(f"{args.model}: {len(view)} units, {len(configs)} configurations (intact + every single deletion), "
          f"{len(data)} windows of {args.seq_len} tokens, batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    spec = RunSpec(batch_size=args.batch_size, progress=False)
    text_sweep(view, subset_windows(data, 1, 0), configs[:2], spec)   # warm-up
    ratios, t_ours, t_naive = [], [], []
    for k in range(args.pairs):   # this machine drifts by several per cent between minutes: pair, alternate
        for which in (("ours", "naive") if k % 2 == 0 else ("naive", "ours")):
            with _Peak() as p:
                t0 = time.perf_counter()
                if which == "ours":
                    ours = text_sweep(view, data, configs, spec)
                else:
                    naive = _naive(model, view, data, configs, args.batch_size)
                (t_ours if which == "ours" else t_naive).append(time.perf_counter() - t0)
            (p1 := p) if which == "ours" else (p2 := p)
        ratios.append(t_ours[-1] / t_naive[-1])
    worst = max(float(np.abs(a[:, :3] - b[:, :3]).max() / max(1.0, np.abs(b[:, :3]).max())) for a, b in zip(ours, naive))
    kl = max(float(np.abs(a[:, 3] - b[:, 3]).max()) for a, b in zip(ours, naive))
    assert worst < 1e-4 and kl < 1e-2, (worst, kl)
    flop, weighted = _ideals(view, model, configs)
    measured, parts = _measured_ideal(view, model, data, configs, args.batch_size)
    ratio = float(np.median(ratios))
    print(f"sums equal: largest relative difference {worst:.1e} (loss, tokens, agreement), KL {kl:.1e}")
    print(f"ours  {' '.join(f'{t:.1f}' for t in t_ours)} s   peak RSS {p1.peak / 2 ** 30:.2f} GiB")
    print(f"naive {' '.join(f'{t:.1f}' for t in t_naive)} s   peak RSS {p2.peak / 2 ** 30:.2f} GiB")
    if len(ratios) > 1:
        from scipy import stats
        m, se = float(np.mean(ratios)), float(np.std(ratios, ddof=1) / np.sqrt(len(ratios)))
        h = float(stats.t.ppf(0.975, len(ratios) - 1)) * se
        print(f"pair ratios {' '.join(f'{r:.3f}' for r in ratios)}; mean {m:.3f}, 95% t interval [{m - h:.3f}, "
              f"{m + h:.3f}]; median below")
    print(f"ratio ours/naive (median of pairs) {ratio:.3f}; the issue's FLOP ideal (n/2+1)/(n+1) = {flop:.3f} "
          f"({ratio / flop - 1:+.0%}); weighted by multiply-adds (head = {model.get_output_embeddings().weight.numel():,}"
          f" of them) = {weighted:.3f} ({ratio / weighted - 1:+.0%})")
    print(f"measured part costs on one batch (s): all units {parts['units']:.3f}, head {parts['head']:.3f}, statistics "
          f"{parts['stats']:.3f}, reference {parts['ref']:.3f}; the model's own forward {parts['model']:.3f}; "
          f"ideal from them = {measured:.3f} ({ratio / measured - 1:+.0%})")
    print(f"target (at most 10% above the ideal): {'met' if ratio <= 1.1 * weighted else 'not met'} against the "
          f"weighted ideal; {'met' if ratio <= 1.1 * measured else 'not met'} against the measured ideal; "
          f"{'met' if ratio <= 1.1 * flop else 'not met'} against (n/2+1)/(n+1)")


if __name__ == "__main__":
    main()
