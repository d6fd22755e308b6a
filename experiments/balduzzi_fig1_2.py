"""Balduzzi et al. 2017, Figs. 1–2: gradients of a 1-D line of inputs through networks at initialization.
A 1-layer net's gradient looks like brown noise, a deep feedforward net with batch norm like white noise
(shattered), a deep ResNet in between; the lag-1 autocorrelation falls ~2^-L (feedforward) vs ~L^-1/2
(ResNet) with depth L.

    python experiments/balduzzi_fig1_2.py          # 5 kinds x 8 depths x 20 inits, 256 points (~30 s)
    python experiments/balduzzi_fig1_2.py --fast   # 3 kinds x depths 1, 8, 24 x 4 inits, 128 points
"""
import time

from _common import finish, out_dir, parser

NAME = "balduzzi_fig1_2"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes.gradcorr import KINDS, fits
    from resprobe.report.gradcorr import gradcorr_synthetic_study
    out = out_dir(args, NAME)
    if args.fast:
        kw = dict(kinds=("ff", "ff-bn", "res-bn"), depths=(1, 8, 24), seeds=4, points=128)
    else:
        kw = dict(kinds=KINDS, depths=(1, 2, 4, 8, 16, 24, 32, 50), seeds=20, points=256)
    df = gradcorr_synthetic_study(**kw, seed=args.seed, out=out, progress=not args.no_progress)
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")]
    nums = {"lag1": {k: {int(d): float(v) for d, v in zip(g["depth"], g["value"])} for k, g in agg.groupby("kind")},
            "fits": fits(df)}
    lines = [f"{k}: lag-1 autocorrelation of the gradient " + ", ".join(f"depth {d}: {v:.3f}" for d, v in by.items())
             for k, by in nums["lag1"].items() if k in kw["kinds"]]
    f = nums["fits"]
    if "ff-bn" in f:
        lines.append(f"ff-bn: lag-1 ~ 2^(s·L), fitted s = {f['ff-bn']['exponential']['slope']:.3f} per layer "
                     "(paper: -1)")
    if "res-bn" in f:
        lines.append(f"res-bn: lag-1 ~ L^s, fitted s = {f['res-bn']['power_law']['slope']:.3f} (paper: -0.5)")
    finish(out, NAME, args, t0, lines, nums)


if __name__ == "__main__":
    main()
