"""Cost of the one-pass identity report relative to a plain inference pass, timed in one run.

    python benchmarks/identity_overhead.py [--limit 2000]

Target (issue 4): the forward-only metrics (ratios, cosine, CKA, response std) cost <= 1.10x a plain
inference pass over the same images; grad_cosine (one backward pass) is reported separately.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


from resprobe.api import load_data, load_model
from resprobe.engine import evaluate
from resprobe.probes.identity import identity_profile

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = load_data(args.data, "test", limit=args.limit)
    model, _ = load_model(args.model, args.weights)

    def ident(**kw):
        return lambda: identity_profile(model, data, "m", args.batch_size, "imagenet", progress=False, n_boot=1, **kw)

    runs = {  # the three single-group runs below show where the forward-only time goes
        "inference": lambda: evaluate(model, data, args.batch_size, "imagenet", progress=False),
        "forward": ident(),
        "grad": ident(grad=True),
    }
    runs["cka only"] = ident(metrics=("cka",))
    runs["norms only"] = ident(metrics=("norms",))
    runs["response_std only"] = ident(metrics=("response_std",))
    best = {k: float("inf") for k in runs}
    for _ in range(args.repeats):  # interleaved, best of N: the machine's drift hits all alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    t_inf = best["inference"]
    print(f"{args.model}, {len(data)} images, batch {args.batch_size}, best of {args.repeats}")
    print(f"plain inference pass:              {t_inf:7.2f} s")
    print(f"identity, forward-only metrics:    {best['forward']:7.2f} s  ratio {best['forward'] / t_inf:.3f} "
          "(target <= 1.10)")
    print(f"identity with grad_cosine:         {best['grad']:7.2f} s  ratio {best['grad'] / t_inf:.3f}")
    print("where the forward-only time goes (each group alone, same decomposed pass):")
    for k in ("cka only", "norms only", "response_std only"):
        print(f"  {k:31s} {best[k]:7.2f} s  ratio {best[k] / t_inf:.3f}")


if __name__ == "__main__":
    main()
