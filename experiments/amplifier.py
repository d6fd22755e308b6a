"""The differential-amplifier conjecture: does a residual unit's branch react more, relative to its size,
to a small perturbation of its input than the matching unit of a plain twin trained alike? κ per unit
for random and worst-case directions, ResNet-20 against plain-20 paired by seed (three seeds); and the
arithmetic reading shown as the identity it is.

    python experiments/amplifier.py          # zoo ResNet-20 + plain-20 x 3 seeds; 256 images, K = 10
    python experiments/amplifier.py --fast   # seed 0 of each, 16 images, K = 3, one ε
"""
from __future__ import annotations

import time

from _common import data, finish, networks, out_dir, parser, spec

NAME = "amplifier"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes import amplify
    ds = data(args, 16, full_limit=256)
    subjects = networks(args, ds, ["resnet20", "plain20"], ["resnet20", "plain20"])
    opts = amplify.AmplifyOptions(eps=(1e-3,), power_iters=3) if args.fast else amplify.AmplifyOptions()
    result = amplify.run(subjects, ds, spec(args, batch_size=128), opts)
    finish(out_dir(args, NAME), NAME, args, t0, result)


if __name__ == "__main__":
    main()
