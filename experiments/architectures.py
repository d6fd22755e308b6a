"""Veit's and the pruning papers' questions asked of today's residual networks: the zoo's small ViT and
ConvNeXt (trained here on the JPEG CIFAR-10) beside its ResNet-20 — single-unit and single-block lesions,
random deletions, deletion of the most similar range against random ranges (Gromov et al.), identity
metrics per unit, and the path-length analysis.

    python experiments/architectures.py          # all 10,000 test images (paths: 256 images, 20 routings)
    python experiments/architectures.py --fast   # 300 images, fewer samples
"""
from __future__ import annotations

import time

from _common import ZOO, data, finish, out_dir, parser, spec

NAME = "architectures"
NETS = {
    "vit": ("timm:vit_tiny_patch16_224(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4, mlp_ratio=2)",
            ZOO / "cifar_vit6" / "model.pt"),
    "convnext": ("timm:convnext_atto(patch_size=2, dims=(24, 48, 96, 192), depths=(2, 2, 2, 2))",
                 ZOO / "cifar_convnext" / "model.pt"),
    "resnet20": ("cifar_resnet20", ZOO / "cifar_resnet20" / "model.pt"),
}


def main():
    p = parser(__doc__, NAME)
    args = p.parse_args()
    t0 = time.time()
    from resprobe.loading import load_subjects
    from resprobe.probes import identity, lesion, paths
    from resprobe.probes.lesion_store import LesionStore
    ds = data(args, 300)
    missing = [str(w) for _, w in NETS.values() if not w.is_file()]
    if missing:
        raise SystemExit(f"missing zoo networks: {', '.join(missing)} (zoo/README.md has their commands)")
    subjects = load_subjects([s for s, _ in NETS.values()], [[str(w)] for _, w in NETS.values()], ds, list(NETS),
                             args.normalize)
    out = out_dir(args, NAME)
    samples = 3 if args.fast else 20
    run_spec = spec(args)
    store = LesionStore(out / "lesion")
    for s in subjects:
        from resprobe.anatomy import anatomy
        n = sum(u.residual for u in anatomy(s.model))
        ks = tuple(k for k in (1, 2, 4, 8, 12, 16) if k <= n)
        lesion.run([s], ds, run_spec, lesion.LesionPlan("random-k", ks=ks, samples=samples), store)
        lesion.run([s], ds, run_spec, lesion.LesionPlan("prune-by-similarity", ks=ks[:4], samples=samples), store)
        if s.label == "vit":  # a transformer block's two units deleted together (its own store: other settings)
            blocks = lesion.run([s], ds, run_spec, lesion.LesionPlan("single", granularity="block"),
                                LesionStore(out / "lesion_blocks"))
            finish(out / "lesion_blocks", NAME, args, t0, blocks)
    result = lesion.run(subjects, ds, run_spec, lesion.LesionPlan("single"), store)
    roles = result.roles
    result.table = lesion.order_rows(store.rows())
    result.summary = lesion.summarize(result.table, result.units)
    result.findings = lesion.findings(result.table, result.units, roles)
    # one verdict per network (different recipes: the contrast is not applicable, and says so)
    result.verdicts = lesion.verdicts(result.table, roles, result.units, result.detail.chance,
                                      run_spec.replace(seed=args.seed), result.detail.bits)
    finish(out / "lesion", NAME, args, t0, result)
    ident = identity.run(subjects, ds, run_spec)
    finish(out / "identity", NAME, args, t0, ident)
    pth = paths.run(subjects, ds.subset(16 if args.fast else 256), run_spec.replace(batch_size=64),
                    paths.PathsOptions(samples=3 if args.fast else 20))
    finish(out / "paths", NAME, args, t0, pth)


if __name__ == "__main__":
    main()
