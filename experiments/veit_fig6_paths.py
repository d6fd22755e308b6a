"""Veit et al. 2016, Fig. 6: the path-length distribution and the gradient carried by paths of each
length; the verdict compares the gradient-weighted path length with the typical one.

    python experiments/veit_fig6_paths.py          # shared ResNet-56, every k, 20 routings per k, 256 images
    python experiments/veit_fig6_paths.py --fast   # zoo ResNet-20, 3 routings per k, 16 images
"""
from __future__ import annotations

import time

from _common import data, finish, networks, out_dir, parser, spec

NAME = "veit_fig6"


def main():
    p = parser(__doc__, NAME)
    p.add_argument("--samples", type=int, help="routings per path length (default 20; --fast 3)")
    args = p.parse_args()
    t0 = time.time()
    from resprobe.probes import paths
    ds = data(args, 16, full_limit=256)
    subjects = networks(args, ds, ["resnet56-shared"], ["resnet20"])
    result = paths.run(subjects, ds, spec(args, batch_size=64), paths.PathsOptions(samples=args.samples or
                                                                                  (3 if args.fast else 20)))
    finish(out_dir(args, NAME), NAME, args, t0, result)


if __name__ == "__main__":
    main()
