"""Veit et al. 2016, Fig. 5: (a) delete k random blocks, (b) reorder blocks by k random swaps; error grows
smoothly with k (no cliff), as for an ensemble of paths.

    python experiments/veit_fig5_random_k_reorder.py          # resnet56, 2000 images, k in 1..20 (9 values), 20 samples
    python experiments/veit_fig5_random_k_reorder.py --fast   # resnet20, k = 1,3,5, 3 samples, 300 images
"""
import time

from _common import data, device, finish, networks, out_dir, parser

NAME = "veit_fig5"


def main():
    p = parser(__doc__, NAME)
    p.add_argument("--samples", type=int, help="random subsets / orders per k (default 20; --fast 3)")
    args = p.parse_args()
    t0 = time.time()
    from resprobe.probes.lesion import lesion_summary
    from resprobe.report.lesion import lesion_study
    models = networks(args, ["resnet56"], ["resnet20"])
    ds, out = data(args, 300), out_dir(args, NAME)
    if not args.fast and args.limit is None:
        ds = ds.subset(2000, args.seed)  # 2 x 180 configurations: the full test set would take hours on 2 cores
    samples = args.samples or (3 if args.fast else 20)
    k = "1,3,5" if args.fast else "1,2,4,6,8,10,12,15,20"
    frames = [lesion_study(models, ds, mode, k=k, samples=samples, seed=args.seed, exclude_downsampling=True,
                           normalize=args.normalize, device=device(args), out=out, progress=not args.no_progress)
              for mode in ("random-k", "reorder")]
    import pandas as pd
    summ = lesion_summary(pd.concat(frames, ignore_index=True))
    lines = []
    for m, s in summ.items():
        rk, ro = s.get("random_k_median_error", {}), s.get("reorder_median_error_by_swaps", {})
        lines.append(f"{m}: median error with k deleted " + ", ".join(f"k={kk}: {100 * v:.1f}%" for kk, v in rk.items()))
        lines.append(f"{m}: median error after k swaps " + ", ".join(f"k={kk}: {100 * v:.1f}%" for kk, v in ro.items()))
    finish(out, NAME, args, t0, lines, summ)


if __name__ == "__main__":
    main()
