"""Veit et al. 2016, Fig. 3: delete one residual block at a time from a trained ResNet; a plain network
(the twin) collapses when any layer is removed, a ResNet degrades smoothly, except at downsampling blocks.

    python experiments/veit_fig3_single_lesions.py            # resnet56 + resnet20 + plain twins, 10k images
    python experiments/veit_fig3_single_lesions.py --fast     # resnet20 + plain-20 twin, 500 images
"""
import time

from _common import data, device, finish, networks, out_dir, parser

NAME = "veit_fig3"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes.lesion import lesion_summary
    from resprobe.report.lesion import lesion_study
    models = networks(args, ["resnet56", "resnet20", "plain56", "plain20"], ["resnet20", "plain20"])
    ds, out = data(args, 500), out_dir(args, NAME)
    df = lesion_study(models, ds, "single", seed=args.seed, normalize=args.normalize, device=device(args), out=out,
                      progress=not args.no_progress)
    summ = lesion_summary(df)
    lines = [f"{m}: baseline {100 * s['baseline_error']:.2f}%, median single deletion "
             f"{100 * s['median_single_deletion_error']:.2f}%, worst {s['worst_block']['block']} "
             f"{100 * s['worst_block']['error']:.2f}%" for m, s in summ.items()]
    finish(out, NAME, args, t0, lines, summ)


if __name__ == "__main__":
    main()
