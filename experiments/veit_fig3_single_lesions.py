"""Veit et al. 2016, Fig. 3: the test error when one residual unit is deleted, unit by unit; the
ResNets against their plain twins trained with the same recipe (three seeds each), and the shared
ResNet-56 and ResNet-20 (trained by others, analysed alone).

    python experiments/veit_fig3_single_lesions.py            # shared + zoo nets, all 10,000 images
    python experiments/veit_fig3_single_lesions.py --fast     # zoo ResNet-20 + plain-20 (seed 0), 500 images
"""
from __future__ import annotations

import time

from _common import data, finish, networks, out_dir, parser, spec

NAME = "veit_fig3"


def main():
    args = parser(__doc__, NAME).parse_args()
    t0 = time.time()
    from resprobe.probes import lesion
    from resprobe.probes.lesion_store import LesionStore
    ds = data(args, 500)
    subjects = networks(args, ds, ["resnet20", "plain20", "resnet56-shared", "resnet20-shared"], ["resnet20", "plain20"])
    out = out_dir(args, NAME)
    # the verdicts: each residual network (group of seeds) against the absolute criterion, and the contrast
    # with its equal-recipe plain twin
    result = lesion.run(subjects, ds, spec(args), lesion.LesionPlan("single"), LesionStore(out))
    finish(out, NAME, args, t0, result)


if __name__ == "__main__":
    main()
