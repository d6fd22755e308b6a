"""Lesion engine vs the naive way, timed in one run on the same images, with an exactness check and the
FLOP ideal of prefix sharing.

    python benchmarks/lesion_engine.py                       # resnet56: single (10k images), random-k and reorder
    python benchmarks/lesion_engine.py --limit 2000          # quicker

The naive way patches a copy of the model for each configuration (the branch's last layer zeroed, branch
weights exchanged) and runs its whole forward pass (tests/oracle.py). The engine computes every unit's input
once per batch and runs each configuration from its first modified unit, reusing the prefix it shares with
the previous configuration (configurations sorted by their per-unit edits walk their prefix tree depth
first). The **ideal** ratio counts FLOPs (torch's FlopCounterMode, per unit): the intact pass plus, per
configuration, the units from its first difference with the previous one (a deleted unit costs only its
shortcut) and the head, against a full forward per configuration. Target (issue 16): the measured time
ratio within 10% of that ideal. Both ways must give identical predictions, image for image.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from resprobe.anatomy import anatomy
from resprobe.loading import load_data, load_model
from resprobe.probes.lesion import LesionPlan, make_configs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tests"))
from oracle import engine_predictions, naive_predictions  # noqa: E402


def _flops(fn, x) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn(x)
    return fc.get_total_flops()


def unit_costs(view, shape) -> dict:
    """FLOPs for one image: stem, each unit whole, each unit without its branch, head."""
    x = torch.zeros(1, *shape)
    with torch.no_grad():
        hs = view.unit_inputs(x)
    full = [_flops(lambda t, i=i: view.run_unit(i, t), hs[i]) for i in range(len(view))]
    deleted = [_flops(lambda t, u=u: u.post(u.shortcut(t)), hs[i]) if u.residual else 0 for i, u in enumerate(view)]
    return dict(stem=_flops(view.stem, x), full=full, deleted=deleted, head=_flops(view.head, hs[-1]))


def ideal_ratio(view, configs, costs, chunk: int = 64) -> float:
    """FLOPs of the engine's walk (in chunks, as lesion.run sends them) over FLOPs of the naive way."""
    n = len(view)
    forward = costs["stem"] + sum(costs["full"]) + costs["head"]
    runnable = sorted((c for c in configs if c.runnable), key=lambda c: c.signature(n))
    engine = 0
    for s in range(0, len(runnable), chunk):
        engine += forward  # the intact pass of the chunk
        prev = tuple((0,) for _ in range(n))
        for c in runnable[s:s + chunk]:
            sig = c.signature(n)
            L = next((i for i, (a, b) in enumerate(zip(prev, sig)) if a != b), n)
            if L < n:
                engine += sum(costs["deleted"][i] if i in c.deleted else costs["full"][i] for i in range(L, n))
                engine += costs["head"]
            prev = sig
    return engine / (forward * len(runnable))


def compare(model, view, data, configs, label, costs, batch_size):
    t0 = time.perf_counter()
    ours = engine_predictions(view, data, configs, batch_size, "imagenet")
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = [c for c in configs if c.runnable]
    naive = [naive_predictions(model, view.names, data, c, batch_size, "imagenet") for c in run]
    t_naive = time.perf_counter() - t0
    same = all(np.array_equal(a, b) for a, b in zip([o for o, c in zip(ours, configs) if c.runnable], naive))
    ideal = ideal_ratio(view, configs, costs)
    ratio = t_engine / t_naive
    print(f"\n[{label}] {len(run)} configurations x {len(data)} images")
    print(f"  engine: {t_engine:8.1f} s   naive: {t_naive:8.1f} s   ratio engine/naive: {ratio:.3f}")
    print(f"  FLOP ideal of prefix sharing: {ideal:.3f}; measured / ideal = {ratio / ideal:.3f} (target <= 1.10)")
    print(f"  identical predictions, image for image, in every configuration: {same}")
    return ours


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=None, help="images for the single sweep (default: all)")
    ap.add_argument("--sweep-limit", type=int, default=1000, help="images for the random-k and reorder sweeps")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--skip-sweeps", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    data = load_data(args.data, "test", limit=args.limit)
    model, _ = load_model(args.model, args.weights, num_classes=data.num_classes)
    view = anatomy(model, data.input_shape)
    costs = unit_costs(view, data.input_shape)
    print(f"{args.model} ({len(view)} units), torch {torch.__version__}, {torch.get_num_threads()} threads")
    configs = make_configs(view, LesionPlan("single"))
    ours = compare(model, view, data, configs, "single", costs, args.batch_size)
    labels = data.labels.numpy()
    print("  n_wrong per configuration (engine):",
          ", ".join(f"{c.label or 'intact'} {int((p != labels).sum())}" for c, p in zip(configs, ours) if c.runnable))
    if not args.skip_sweeps:
        sub = load_data(args.data, "test", limit=args.sweep_limit)
        for mode, ks in (("random-k", (1, 5, 10, 15, 20)), ("reorder", (1, 2, 4, 8))):
            cfg = make_configs(view, LesionPlan(mode, ks=ks, samples=4), seed=0)
            compare(model, view, sub, cfg, f"{mode}, k = {','.join(map(str, ks))}, 4 samples", costs, args.batch_size)


if __name__ == "__main__":
    main()
