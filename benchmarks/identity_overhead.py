"""Cost of the identity study relative to a plain inference pass over the same images, timed in one run.

    python benchmarks/identity_overhead.py                  # resnet56, the 10k JPEG test set, 2 pairs per row
    python benchmarks/identity_overhead.py --only default --repeats 10  # the target's row, 10 pairs
    python benchmarks/identity_overhead.py --limit 2000     # quicker

Each identity run is timed beside its own plain inference pass (before or after it, alternately), and each pair
gives a ratio (this machine's speed drifts by several per cent between minutes, which best-of-N timings of the two
sides taken minutes apart do not cancel). Printed per row: the median and range of the pairs' ratios; for the
default row, the target's verdict from the 95% t interval of their mean (met when it lies at or below 1.10, not
met above it, inconclusive across).

Target (issue 16): the default identity study (ratios, cosines, block influence, response std, and CKA on its
seeded subset of 2,048 images) costs <= 1.10x a plain inference pass; CKA on every image
(``--cka-images all``) and grad_cosine (one backward pass) are reported beside it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import stats

from resprobe.engine import RunSpec, evaluate
from resprobe.loading import load_data, load_model
from resprobe.probes import identity
from resprobe.study import Subject

SHARED = Path(__file__).resolve().parents[2] / "shared"
TARGET = 1.10  # issue 16: the default identity study within 1.10x a plain inference pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="pairs (identity run, inference run) per row")
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
    rows = [k for k in runs if k != "inference"]
    times = {k: [] for k in runs}
    ratios = {k: [] for k in rows}
    # each identity run is paired with a plain inference pass run right before or after it (the order alternates),
    # so that the machine's drift, which is slow against one pair, cancels in the pair's ratio
    for r in range(args.repeats):
        for j, k in enumerate(rows):
            pair = ["inference", k] if (r + j) % 2 == 0 else [k, "inference"]
            got = {}
            for name in pair:
                t0 = time.perf_counter()
                runs[name]()
                got[name] = time.perf_counter() - t0
                times[name].append(got[name])
            ratios[k].append(got[k] / got["inference"])
    t_inf = min(times["inference"])
    print(f"{args.model}, {len(data)} images, batch {args.batch_size}, {spec.n_boot} bootstrap resamples, "
          f"{args.repeats} pairs per row")
    print(f"plain inference pass (best):         {t_inf:7.2f} s")
    for k in rows:
        q = np.quantile(ratios[k], [0, 0.5, 1])
        print(f"identity, {k:26s} {min(times[k]):7.2f} s (best)  ratio {q[1]:.3f} median of pairs; "
              f"range {q[0]:.3f}-{q[2]:.3f}; best against best {min(times[k]) / t_inf:.3f}")
        print(f"    pairs in order: {' '.join(f'{r:.3f}' for r in ratios[k])}")
        if k == "default" and len(ratios[k]) >= 2:
            # criterion written before measuring: met when the 95% t interval of the mean pair ratio lies at or
            # below 1.10, not met when above it, inconclusive when it straddles 1.10
            r = np.asarray(ratios[k])
            m, half = r.mean(), stats.t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r))
            verdict = "met" if m + half <= TARGET else "not met" if m - half > TARGET else "inconclusive"
            print(f"    target <= {TARGET}: mean of pairs {m:.3f}, 95% CI [{m - half:.3f}, {m + half:.3f}] "
                  f"over {len(r)} pairs: {verdict}")

if __name__ == "__main__":
    main()
