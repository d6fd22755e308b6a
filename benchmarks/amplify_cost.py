"""Cost of the worst-case gains (10 power iterations for every unit's Jacobian and its branch's, with J v and
Jᵀ u in closed form for chains of convolutions, BatchNorms and ReLUs — else from one linearization and one
pullback of each branch) relative to one forward pass over the same images, timed in one run, with the one-unit-at-a-time way
(a jvp and a vjp per iteration and unit, the forward recomputed each time) beside it.

    python benchmarks/amplify_cost.py                  # resnet56, 256 test images, batch 128
    python benchmarks/amplify_cost.py --model cifar_resnet20 --weights ../shared/models/resnet20-12fca82f.th

Times are this process's CPU time (robust to other load on the machine; ``--threads`` sets torch's threads,
default 1). Target (issue 16): <= 50x a forward pass, with the same spectral norms (checked against the exact value in
tests/test_amplify.py).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.func import jvp, vjp

from resprobe.anatomy import anatomy, frozen_eval
from resprobe.loading import load_data, load_model
from resprobe.metrics.similarity import per_image_norm
from resprobe.probes.amplify import unit_spectral_norms

SHARED = Path(__file__).resolve().parents[2] / "shared"


def one_at_a_time(fn, x, iters, gen):
    v = torch.randn(x.shape, generator=gen)
    v = v / per_image_norm(v).float().view(-1, 1, 1, 1)
    for _ in range(iters):
        _, jv = jvp(fn, (x,), (v,))
        _, pull = vjp(fn, x)
        (w,) = pull(jv)
        v = w / per_image_norm(w).float().view(-1, 1, 1, 1).clamp_min(1e-30)
    return per_image_norm(jvp(fn, (x,), (v,))[1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, "test", limit=args.limit)
    model, _ = load_model(args.model, args.weights)
    view = anatomy(model, data.input_shape)
    n = len(view)
    t_fwd = t_ours = t_naive = 0.0
    with frozen_eval(model):
        for x, _, _ in data.batches(args.batch_size, "imagenet"):
            with torch.no_grad():
                t0 = time.process_time()
                hs = view.unit_inputs(x)
                view.head(hs[-1])
                t_fwd += time.process_time() - t0
            fns = [u.branch for u in view] + [lambda t, i=i: view.run_unit(i, t) for i in range(n)]
            t0 = time.process_time()
            g = torch.Generator().manual_seed(0)
            pairs = [unit_spectral_norms(u, hs[i].detach(), args.iters, g) for i, u in enumerate(view)]
            ours = [p[0] for p in pairs] + [p[1] for p in pairs]
            t_ours += time.process_time() - t0
            t0 = time.process_time()
            naive = [one_at_a_time(f, h, args.iters, torch.Generator().manual_seed(0))
                     for f, h in zip(fns, [h.detach() for h in hs[:-1]] * 2)]
            t_naive += time.process_time() - t0
    rel = max(float(((a - b).abs() / b).max()) for a, b in zip(ours, naive))
    print(f"{args.model}: {n} units, {len(data)} images, batch {args.batch_size}, {args.iters} power iterations, "
          f"{torch.get_num_threads()} thread(s), CPU time")
    print(f"forward pass:                          {t_fwd:7.2f} s")
    print(f"ours (closed-form maps, all units):    {t_ours:7.2f} s  = {t_ours / t_fwd:6.1f}x a forward (target <= 50x)")
    print(f"one unit at a time (jvp + vjp per it.): {t_naive:7.2f} s  = {t_naive / t_fwd:6.1f}x a forward")
    print(f"ratio ours / one at a time: {t_ours / t_naive:.3f}; largest relative difference of the norms "
          f"(different random starts, {args.iters} iterations): {rel:.2e}")


if __name__ == "__main__":
    main()
