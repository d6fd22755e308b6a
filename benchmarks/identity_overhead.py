"""Cost of the identity study relative to a plain inference pass over the same images, timed in one run.

    python benchmarks/identity_overhead.py                  # resnet56, the 10k JPEG test set, best of 2
    python benchmarks/identity_overhead.py --limit 2000     # quicker

Target (issue 16): the default identity study (ratios, cosines, block influence, response std, and CKA on its
seeded subset of 2,048 images) costs <= 1.10x a plain inference pass; CKA on every image
(``--cka-images all``) and grad_cosine (one backward pass) are reported beside it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from resprobe.engine import RunSpec, evaluate
from resprobe.loading import load_data, load_model
from resprobe.probes import identity
from resprobe.study import Subject

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=RunSpec().n_boot,
                    help="bootstrap resamples (default: the CLI's, as `resprobe identity` runs)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these rows (names as printed), besides inference")
    args = ap.parse_args()
    data = load_data(args.data, "test", limit=args.limit)
    model, _ = load_model(args.model, args.weights)
    spec = RunSpec(batch_size=args.batch_size, progress=False, n_boot=args.n_boot)
    subject = Subject("m", model, "imagenet")

    def ident(**kw):
        return lambda: identity.profile(subject, data, spec, identity.IdentityOptions(**kw))

    runs = {"inference": lambda: evaluate(model, data, spec, "imagenet"), "default": ident(),
            "cka on every image": ident(cka_images=None), "with grad_cosine": ident(grad=True),
            "norms only": ident(metrics=("norms",)), "cka only (subset)": ident(metrics=("cka",)),
            "response_std only": ident(metrics=("response_std",))}
    if args.only:
        runs = {k: fn for k, fn in runs.items() if k == "inference" or k in args.only}
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # interleaved, best of N: the machine's drift hits all alike
        for k, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    t_inf = best["inference"]
    print(f"{args.model}, {len(data)} images, batch {args.batch_size}, {spec.n_boot} bootstrap resamples, "
          f"best of {args.repeats}")
    print(f"plain inference pass:                {t_inf:7.2f} s")
    for k in runs:
        if k != "inference":
            note = " (target <= 1.10)" if k == "default" else ""
            pairs = sorted(a / b for a, b in zip(times[k], times["inference"]))  # each repeat against its own
            spread = f"; per repeat {pairs[len(pairs) // 2]:.3f} median, {pairs[0]:.3f}-{pairs[-1]:.3f}"
            print(f"identity, {k:26s} {best[k]:7.2f} s  ratio {best[k] / t_inf:.3f}{note}{spread}")


if __name__ == "__main__":
    main()
