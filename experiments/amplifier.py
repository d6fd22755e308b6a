"""The differential-amplifier conjecture: does a residual block amplify small perturbations of its input
(or weights) more in its branch F than in its output y? Random and worst-case (Jacobian spectral norm)
gains per block and end to end, ResNets vs plain twins.

    python experiments/amplifier.py          # resnet20, resnet56, plain-20, plain-56; 256 images, K=10
    python experiments/amplifier.py --fast   # resnet20 + plain-20, 16 images, K=3, one ε
"""
import json
import time

from _common import data, device, finish, networks, out_dir, parser

NAME = "amplifier"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.report.amplify import amplify_study
    models = networks(args, ["resnet20", "resnet56", "plain20", "plain56"], ["resnet20", "plain20"])
    ds, out = data(args, 16), out_dir(args, NAME)
    if not args.fast and args.limit is None:
        ds = ds.subset(256, args.seed)
    kw = dict(eps=(1e-3,), power_iters=3) if args.fast else dict(eps=(1e-4, 1e-3, 1e-2), power_iters=10)
    amplify_study(models, ds, **kw, normalize=args.normalize, device=device(args), seed=args.seed, out=out,
                  progress=not args.no_progress)
    v = json.loads((out / "amplify.json").read_text())["verdict"]  # the verdict the study computed and wrote
    finish(out, NAME, args, t0, v["statements"] + [f"verdict: {v.get('verdict', 'n/a')}"], v)


if __name__ == "__main__":
    main()
