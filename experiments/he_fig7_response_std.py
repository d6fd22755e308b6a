"""He et al. 2016, Fig. 7: standard deviation of every 3x3 layer's response (after BN, before the addition
or nonlinearity), by layer index and sorted; ResNets respond less than plain nets, and deeper ResNets
less still. Also the per-block ‖F‖/‖x‖ and the effective depth.

    python experiments/he_fig7_response_std.py          # resnet20, resnet56, plain-20, plain-56; 10k images
    python experiments/he_fig7_response_std.py --fast   # resnet20 + plain-20, 500 images
"""
import time

from _common import data, device, finish, networks, out_dir, parser

NAME = "he_fig7"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes.identity import effective_depth
    from resprobe.report.identity import identity_study
    models = networks(args, ["resnet20", "resnet56", "plain20", "plain56"], ["resnet20", "plain20"])
    ds, out = data(args, 500), out_dir(args, NAME)
    df = identity_study(models, ds, normalize=args.normalize, device=device(args), seed=args.seed, out=out,
                        n_boot=200 if args.fast else 1000, progress=not args.no_progress)
    std = df[df["metric"] == "response_std"].groupby("model", sort=False)["value"].median()
    ratio = df[df["metric"] == "residual_ratio"].groupby("model", sort=False)["value"].median()
    eff = effective_depth(df)
    nums = {m: dict(median_response_std=float(std[m]),
                    median_residual_ratio=float(ratio[m]) if m in ratio else None,
                    effective_depth=eff.get(m, {}).get("effective_depth")) for m in std.index}
    lines = [f"{m}: median response std {v['median_response_std']:.3f}"
             + (f", median ‖F‖/‖S‖ {v['median_residual_ratio']:.3f}" if v["median_residual_ratio"] is not None else "")
             for m, v in nums.items()]
    finish(out, NAME, args, t0, lines, nums)


if __name__ == "__main__":
    main()
