"""Routed backward passes from one forward vs a forward+backward per routing, timed in one run.

    python benchmarks/paths_routing.py [--samples 50] [--batch-size 64]

Target (issue 6): S = 50 routed samples from one forward cost <= 0.7x S separate forward+backward.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from resprobe.anatomy import anatomy
from resprobe.loading import load_data, load_model
from resprobe.probes.paths import RoutedBackward

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    data = load_data(args.data, "test", limit=args.batch_size)
    model, _ = load_model(args.model, args.weights)
    for p in model.parameters():
        p.requires_grad_(False)
    view = anatomy(model, data.input_shape)
    n = len(view)
    rng = np.random.default_rng(0)
    routes = []
    for _ in range(args.samples):
        k = int(rng.integers(0, n + 1))
        chosen = set(rng.choice(n, size=k, replace=False).tolist())
        routes.append([i in chosen for i in range(n)])
    x, y, _ = next(data.batches(args.batch_size, "imagenet"))
    t0 = time.perf_counter()
    rb = RoutedBackward(view, x, y, to_image=True)
    ours = [rb.grad(r)[1] for r in routes]
    t_ours = time.perf_counter() - t0
    del rb
    t0 = time.perf_counter()
    naive = [RoutedBackward(view, x, y, to_image=True).grad(r)[1] for r in routes]
    t_naive = time.perf_counter() - t0
    same = all(torch.equal(a, b) for a, b in zip(ours, naive))
    print(f"{args.model}: {n} blocks, batch {args.batch_size}, {args.samples} routings (k uniform on 0..{n})")
    print(f"one forward + {args.samples} routed backwards: {t_ours:.2f} s")
    print(f"{args.samples} x (forward + routed backward):  {t_naive:.2f} s")
    print(f"ratio: {t_ours / t_naive:.3f} (target <= 0.7); identical gradients: {same}")


if __name__ == "__main__":
    main()
