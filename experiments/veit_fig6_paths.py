"""Veit et al. 2016, Fig. 6: (a) distribution of path lengths of the unraveled network (binomial), (b)
gradient magnitude reaching the input per path of length k, (c) total gradient per length: most of it
comes from short paths.

    python experiments/veit_fig6_paths.py          # resnet56, every k, 20 routings per k, 256 images
    python experiments/veit_fig6_paths.py --fast   # resnet20, 3 routings per k, 16 images
"""
import time

from _common import data, device, finish, networks, out_dir, parser

NAME = "veit_fig6"


def main():
    p = parser(__doc__, NAME)
    p.add_argument("--samples", type=int, help="routings per path length (default 20; --fast 3)")
    args = p.parse_args()
    t0 = time.time()
    from resprobe.report.paths import paths_study, summarize_paths
    models = networks(args, ["resnet56"], ["resnet20"])
    ds, out = data(args, 16), out_dir(args, NAME)
    if not args.fast and args.limit is None:
        ds = ds.subset(256, args.seed)
    df = paths_study(models, ds, samples=args.samples or (3 if args.fast else 20), seed=args.seed,
                     normalize=args.normalize, device=device(args), out=out, progress=not args.no_progress)
    summ = summarize_paths(df)
    lines = []
    for m, s in summ.items():
        if "range" in s:
            lo, hi = s["range"]
            lines.append(f"{m}: 90% of the input gradient from paths of length {lo}–{hi} of {s['n_blocks']} "
                         f"({100 * s['fraction_of_paths']:.1f}% of the paths; gradient per length peaks at "
                         f"k = {s['peak_k']}, mean path length {s['mean_path_length']:g})")
    finish(out, NAME, args, t0, lines, summ)


if __name__ == "__main__":
    main()
