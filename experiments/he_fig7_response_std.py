"""He et al. 2016, Fig. 7: the standard deviation of every layer's response; the verdict compares the
ResNet-20 with its plain twin trained alike, paired by seed (three seeds). Also ‖F‖/‖S‖ and ‖F‖/‖x‖ per
unit and the shared ResNets (trained by others; described, not contrasted).

    python experiments/he_fig7_response_std.py          # zoo ResNet-20 + plain-20 x 3 seeds, shared nets; 10k images
    python experiments/he_fig7_response_std.py --fast   # zoo ResNet-20 + plain-20 (seed 0), 500 images
"""
from __future__ import annotations

import time

from _common import data, finish, networks, out_dir, parser, spec

NAME = "he_fig7"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes import identity
    ds = data(args, 500)
    subjects = networks(args, ds, ["resnet20", "plain20", "resnet20-shared", "resnet56-shared", "plain56"],
                        ["resnet20", "plain20"])
    result = identity.run(subjects, ds, spec(args, n_boot=200 if args.fast else 1000))
    finish(out_dir(args, NAME), NAME, args, t0, result)


if __name__ == "__main__":
    main()
