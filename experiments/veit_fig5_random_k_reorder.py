"""Veit et al. 2016, Fig. 5a/5b: the error when k random units are deleted, and when the residual
branches are reordered by k random swaps; the verdict tests the "smooth, no cliff" claim.

    python experiments/veit_fig5_random_k_reorder.py          # shared ResNet-56, 2,000 images, k in 1..20, 20 samples
    python experiments/veit_fig5_random_k_reorder.py --fast   # zoo ResNet-20, k = 1..5, 3 samples, 300 images
"""
from __future__ import annotations

import time

from _common import data, finish, networks, out_dir, parser, spec

NAME = "veit_fig5"


def main():
    p = parser(__doc__, NAME)
    p.add_argument("--samples", type=int, help="random subsets / orders per k (default 20; --fast 3)")
    args = p.parse_args()
    t0 = time.time()
    from resprobe.probes import lesion
    from resprobe.probes.lesion_store import LesionStore
    # 2 x 180 configurations: the full test set would take hours on 2 cores
    ds = data(args, 300, full_limit=2000)
    subjects = networks(args, ds, ["resnet56-shared"], ["resnet20"])
    out = out_dir(args, NAME)
    samples = args.samples or (3 if args.fast else 20)
    ks = (1, 2, 3, 4, 5) if args.fast else (1, 2, 3, 4, 6, 8, 10, 12, 15, 20)
    store = LesionStore(out)
    lesion.run(subjects, ds, spec(args), lesion.LesionPlan("reorder", ks=ks, samples=samples), store)
    result = lesion.run(subjects, ds, spec(args), lesion.LesionPlan("random-k", ks=ks, samples=samples,
                                                                    exclude_downsampling=True), store)
    finish(out, NAME, args, t0, result)


if __name__ == "__main__":
    main()
