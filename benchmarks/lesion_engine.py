"""Lesion engine vs the naive way, timed in one run on the same images, with an exactness check.

    python benchmarks/lesion_engine.py                       # resnet56, full JPEG test set, single + random-k
    python benchmarks/lesion_engine.py --limit 2000          # quicker

The naive way patches a copy of the model for each configuration and runs its whole forward pass
over the data. The engine computes every block's input once per batch and runs each configuration
from its first modified block, reusing prefixes shared with the previous configuration.
For ``single`` with n blocks the ideal ratio is (n/2 + 1)/(n + 1) (0.52 for n = 27); target <= 0.60.
Both ways must give identical predictions, image for image (checked here for every configuration).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from resprobe.anatomy import anatomy
from resprobe.api import load_data, load_model
from resprobe.probes.lesion import engine_predictions, make_configs, naive_predictions

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def compare(model, view, data, configs, normalize, batch_size, label):
    t0 = time.perf_counter()
    ours = engine_predictions(view, data, configs, batch_size, normalize)
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = [naive_predictions(model, view.names, data, c, batch_size, normalize) for c in configs]
    t_naive = time.perf_counter() - t0
    same = all(np.array_equal(a, b) for a, b in zip(ours, naive))
    labels = data.labels.numpy()
    print(f"\n[{label}] {len(configs)} configurations x {len(data)} images")
    print(f"  engine: {t_engine:8.1f} s")
    print(f"  naive:  {t_naive:8.1f} s")
    print(f"  ratio engine/naive: {t_engine / t_naive:.3f}")
    print(f"  identical predictions, image for image, in every configuration: {same}")
    return ours, naive, labels, t_engine / t_naive, same


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--normalize", default="imagenet")
    ap.add_argument("--limit", type=int, default=None, help="images for the single sweep (default: all)")
    ap.add_argument("--randomk-limit", type=int, default=1000, help="images for the random-k sweep")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--skip-randomk", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    data = load_data(args.data, "test", limit=args.limit)
    model, _ = load_model(args.model, args.weights, num_classes=data.num_classes)
    view = anatomy(model, data.input_shape)
    n = len(view)
    print(f"{args.model} ({n} blocks), torch {torch.__version__}, {torch.get_num_threads()} threads")
    configs = [c for c in make_configs(view, "single") if c.runnable]  # plain twins: shape-changing blocks stay
    ours, naive, labels, ratio, same = compare(model, view, data, configs, args.normalize, args.batch_size, "single")
    print(f"  ideal ratio (n/2+1)/(n+1) = {(n / 2 + 1) / (n + 1):.3f}; target <= 0.60")
    print("  n_wrong per configuration (engine / naive):")
    for c, a, b in zip(configs, ours, naive):
        name = "+".join(view.names[i] for i in c.deleted) or "baseline"
        print(f"    {name:<10} {int((a != labels).sum()):>6} {int((b != labels).sum()):>6}")
    if not args.skip_randomk:
        sub = load_data(args.data, "test", limit=args.randomk_limit)
        cfg = make_configs(view, "random-k", k="1,5,10,15,20", samples=4, seed=0)
        compare(model, view, sub, cfg, args.normalize, args.batch_size, "random-k, k = 1,5,10,15,20, 4 samples")


if __name__ == "__main__":
    main()
