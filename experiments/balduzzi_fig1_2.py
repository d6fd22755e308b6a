"""Balduzzi et al. 2017, Figs. 1-2: gradients of f: R -> R networks along a line of inputs at
initialisation — brown (1 layer) to white (deep feedforward + BN), ResNets in between; the decay rates
fitted against depth with CIs over initialisations, and the far-apart correlations that follow the
paper's 2^-L regime.

    python experiments/balduzzi_fig1_2.py          # 5 kinds x 8 depths x 20 inits, 256 points (~30 s)
    python experiments/balduzzi_fig1_2.py --fast   # 3 kinds x depths 1, 8, 24 x 4 inits, 128 points
"""
from __future__ import annotations

import time

from _common import finish, out_dir, parser

NAME = "balduzzi_fig1_2"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.engine import RunSpec
    from resprobe.probes import gradcorr
    if args.fast:
        opts = gradcorr.SyntheticOptions(kinds=("ff", "ff-bn", "res-bn"), depths=(1, 8, 24), seeds=4, points=128)
    else:
        opts = gradcorr.SyntheticOptions()
    result = gradcorr.run_synthetic(opts, RunSpec(seed=args.seed, progress=not args.no_progress))
    finish(out_dir(args, NAME), NAME, args, t0, result)


if __name__ == "__main__":
    main()
