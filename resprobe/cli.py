"""Command line: thin wrappers over the Python API. ``resprobe --help``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import api

def _expected_errors() -> tuple:
    from .anatomy import AnatomyError
    from .io.checkpoint import CheckpointError
    from .io.data import DataError
    from .models import SpecError
    return (AnatomyError, CheckpointError, DataError, SpecError, FileNotFoundError, ValueError)


def _model_args(p: argparse.ArgumentParser, weights_required: bool = False) -> None:
    p.add_argument("--model", required=True, help="model spec: cifar_resnet56, cifar_plain20, torchvision:resnet50, "
                                                  "package.module:factory, ...")
    p.add_argument("--weights", required=weights_required, help="checkpoint (state dict, or dict with state_dict/model)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of the checkpoint (can run arbitrary code: only for files you trust)")


def _data_args(p: argparse.ArgumentParser, split: str = "test") -> None:
    p.add_argument("--data", required=True, help="cifar10 | imagefolder:PATH | fashion-mnist | synthetic")
    p.add_argument("--data-root", help="folder holding the data set (cifar10, fashion-mnist)")
    p.add_argument("--download", action="store_true", help="allow downloading the data set (checksum verified)")
    p.add_argument("--split", default=split, help=f"split to use (default {split})")
    p.add_argument("--normalize", default=None, choices=["imagenet", "cifar10", "none"],
                   help="input normalization (default: the one recorded by resprobe train beside --weights, "
                        "else imagenet — what the He et al. checkpoints in ../shared need)")
    p.add_argument("--limit", type=int, help="use a deterministic seeded subset of N images (not the first N)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")


def _normalization(args) -> str:
    return args.normalize or api.trained_normalization(getattr(args, "weights", None)) or "imagenet"


def cmd_info(args) -> int:
    from .anatomy import anatomy
    model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint)
    shape = tuple(int(s) for s in args.input_size.split(",")) if args.input_size else api.default_input_shape(model)
    view = anatomy(model, shape)
    rows = view.table()
    if args.json:
        print(json.dumps(dict(prov, input_shape=list(shape), n_blocks=len(rows), blocks=rows), default=list))
        return 0
    print(f"{args.model}: {len(rows)} residual blocks in {view.n_stages} stages, input {shape}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    hdr = f"{'#':>3}  {'block':<16} {'stage':>5} {'idx':>3}  {'in -> out':<28} {'shortcut':<10} {'params':>10}"
    print(hdr)
    print("-" * len(hdr))
    for i, r in enumerate(rows):
        io = f"{'x'.join(map(str, r['in_shape']))} -> {'x'.join(map(str, r['out_shape']))}"
        print(f"{i:>3}  {r['name']:<16} {r['stage']:>5} {r['index_in_stage']:>3}  {io:<28} {r['shortcut']:<10} "
              f"{r['params']:>10,}")
    return 0


def cmd_eval(args) -> int:
    from .engine import evaluate, resolve_device
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit)
    model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint, num_classes=data.num_classes,
                                 in_channels=data.input_shape[0])
    dev = resolve_device(args.device)
    model.to(dev)
    norm = _normalization(args)
    t0 = time.time()
    res = evaluate(model, data, args.batch_size, norm, dev, progress=not args.json)
    out = dict(res, model=args.model, weights=prov["weights"], weights_sha256=prov["weights_sha256"],
               data=args.data, split=data.split, normalize=norm, limit=args.limit, device=str(dev),
               seconds=round(time.time() - t0, 3))
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.model} on {args.data} [{data.split}], {res['n_images']} images: error {res['error']:.4%} "
              f"({res['n_wrong']} wrong), loss {res['loss']:.4f}"
              + (f", top-5 error {res['top5_error']:.4%}" if "top5_error" in res else ""))
    return 0


def cmd_train(args) -> int:
    from .engine import resolve_device
    from .training import train
    torch.manual_seed(args.seed)
    train_data = api.load_data(args.data, "train", args.data_root, args.download, args.limit)
    test_data = api.load_data(args.test_data or args.data, "test", args.data_root, args.download, args.test_limit)
    model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint,
                                 num_classes=train_data.num_classes, in_channels=train_data.input_shape[0])
    dev = resolve_device(args.device)
    norm = args.normalize or "imagenet"
    cfg = dict(model=args.model, init_weights=prov["weights"], command=" ".join(["resprobe"] + sys.argv[1:]),
               versions=api.versions(), device=str(dev))
    df = train(model, train_data, test_data, args.epochs, args.out, lr=args.lr, momentum=args.momentum,
               weight_decay=args.weight_decay, batch_size=args.batch_size, schedule=args.schedule, normalize=norm,
               augment=not args.no_augment, device=dev, seed=args.seed, resume=args.resume, config=cfg)
    last = df.iloc[-1]
    print(f"trained {args.model}: final train error {last.train_error:.4f}, test error {last.test_error:.4f}; "
          f"weights in {Path(args.out) / 'model.pt'}, metrics in {Path(args.out) / 'metrics.csv'}")
    return 0


def _labels(specs, weights, labels):
    if labels:
        if len(labels) != len(specs):
            raise ValueError("give one --label per --model")
        return labels
    out = []
    for s, w in zip(specs, weights):
        out.append(s if specs.count(s) == 1 else f"{s}:{Path(w).stem if w else 'init'}")
    return out


def _models_and_data(args):
    """Data, device, normalization and ``(label, model, provenance)`` for repeated --model/--weights."""
    from .engine import resolve_device
    specs = args.model
    weights = args.weights or []
    if len(weights) not in (0, len(specs)):
        raise ValueError(f"give one --weights per --model ({len(specs)} models, {len(weights)} weights); "
                         "use 'none' for a randomly initialised model")
    weights = [None if (w or "").lower() in ("", "none") else w for w in weights] or [None] * len(specs)
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit)
    dev = resolve_device(args.device)
    models = []
    for label, spec, w in zip(_labels(specs, weights, args.label), specs, weights):
        model, prov = api.load_model(spec, w, args.trust_checkpoint, num_classes=data.num_classes,
                                     in_channels=data.input_shape[0])
        models.append((label, model, prov))
    norm = args.normalize or api.trained_normalization(weights[0]) or "imagenet"
    return data, dev, norm, models


def cmd_lesion(args) -> int:
    from .report.lesion import lesion_study
    data, dev, norm, models = _models_and_data(args)
    blocks = [b.strip() for b in args.blocks.split(",")] if args.blocks else None
    df = lesion_study(models, data, args.mode, blocks, args.k, args.samples, args.seed, args.exclude_downsampling,
                      args.batch_size, norm, dev, args.out, progress=True)
    for m, g in df.groupby("model", sort=False):
        base = g[g["mode"] == "baseline"]["error"]
        print(f"{m}: {len(g)} configurations; baseline error {float(base.iloc[0]):.4f}" if len(base) else m)
    print(f"results in {Path(args.out) / 'lesion.csv'}, {Path(args.out) / 'lesion.json'} and plots in {args.out}")
    return 0


def cmd_identity(args) -> int:
    from .report.identity import identity_study
    data, dev, norm, models = _models_and_data(args)
    identity_study(models, data, args.batch_size, norm, dev, grad=args.grad, threshold=args.threshold,
                   lesion_check=args.lesion_check, seed=args.seed, cka_minibatch=args.cka_minibatch, out=args.out,
                   metrics=[m.strip() for m in args.metrics.split(",") if m.strip()])
    out = Path(args.out)
    print(f"results in {out / 'identity.csv'}, {out / 'identity.json'}; report {out / 'report.html'}")
    return 0


def cmd_paths(args) -> int:
    from .probes.lesion import parse_range
    from .report.paths import paths_study, summarize_paths
    data, dev, norm, models = _models_and_data(args)
    ks = None
    if args.k:
        from .anatomy import anatomy
        n = sum(b.residual for b in anatomy(models[0][1]))
        ks = parse_range(args.k.replace("n", str(n)), n)
    df = paths_study(models, data, ks, args.samples, args.seed, args.batch_size, norm, dev, args.share, args.out)
    for m, s in summarize_paths(df, args.share).items():
        if "range" in s:
            print(f"{m}: {s['share']:.0%} of the gradient comes from paths of length {s['range'][0]}-{s['range'][1]} "
                  f"(of {s['n_blocks']} blocks): {s['fraction_of_paths']:.3%} of all paths")
    print(f"results in {Path(args.out) / 'paths.csv'}, {Path(args.out) / 'paths.json'}")
    return 0


def cmd_gradcorr(args) -> int:
    from .report.gradcorr import gradcorr_synthetic_study, gradcorr_trained_study
    if args.target != "synthetic":
        if not args.model or not args.data:
            raise ValueError("resprobe gradcorr needs 'synthetic' or --model ... --data ...")
        data, dev, norm, models = _models_and_data(args)
        df = gradcorr_trained_study(models, data, args.lines, args.points, args.line, args.span, args.grad_target,
                                    args.seed, norm, dev, args.out)
        from .report.gradcorr import gradcorr_trained_findings
        print("\n".join(gradcorr_trained_findings(df)))
        print(f"results in {Path(args.out) / 'gradcorr.csv'}, {Path(args.out) / 'gradcorr.json'}")
        return 0
    kinds = [k.strip() for k in args.kinds.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    df = gradcorr_synthetic_study(kinds, depths, args.seeds, args.width, args.points, args.beta, args.seed, args.out)
    agg = df[(df["seed"] == "all") & (df["metric"] == "lag1")]
    for kind, g in agg.groupby("kind", sort=False):
        print(f"{kind:>12}: lag-1 " + ", ".join(f"L={int(r.depth)}: {r.value:.3f}" for r in g.itertuples()))
    print(f"results in {Path(args.out) / 'gradcorr.csv'}, {Path(args.out) / 'gradcorr.json'}")
    return 0


def cmd_amplify(args) -> int:
    import json as _json
    from .report.amplify import amplify_study
    data, dev, norm, models = _models_and_data(args)
    eps = [float(e) for e in args.eps.split(",")]
    if any(not 0 < e < 1 for e in eps):
        raise ValueError(f"--eps values must lie in (0, 1), got {eps}")
    if args.power_iters < 1:
        raise ValueError("--power-iters must be >= 1")
    amplify_study(models, data, eps, args.power_iters, args.batch_size, norm, dev, args.seed, args.out)
    meta = _json.loads((Path(args.out) / "amplify.json").read_text())
    print("\n".join(meta["verdict"]["statements"]))
    if "verdict" in meta["verdict"]:
        print(f"verdict: {meta['verdict']['verdict']} ({meta['verdict']['criterion']})")
    print(f"results in {Path(args.out) / 'amplify.csv'}, {Path(args.out) / 'amplify.json'}")
    return 0


def cmd_report(args) -> int:
    from .engine import resolve_device
    from .report.full import full_report
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit)
    dev = resolve_device(args.device)
    kw = dict(num_classes=data.num_classes, in_channels=data.input_shape[0])
    model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint, **kw)
    plain = None
    if args.plain:
        pm, pp = api.load_model(args.plain, args.plain_weights, args.trust_checkpoint, **kw)
        plain = (args.plain_label or args.plain, pm, pp)
    norm = args.normalize or api.trained_normalization(args.weights) or "imagenet"
    res = full_report((args.label or args.model, model, prov), data, plain, args.budget, norm, dev, args.seed, args.out)
    for k, v in res.items():
        print(f"{k:>9}: {v['verdict']} ({v['seconds']:.1f} s)")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_demo(args) -> int:
    from .report.full import full_report
    from .training import train
    out = Path(args.out)
    if args.data:
        train_data = api.load_data(args.data, "train", args.data_root, args.download, args.limit)
        test_data = api.load_data(args.test_data or args.data, "test", args.data_root, args.download, args.limit)
    else:
        train_data = api.load_data("synthetic(n=2000)", "train")
        test_data = api.load_data("synthetic(n=500)", "test")
    kw = dict(num_classes=train_data.num_classes, in_channels=train_data.input_shape[0])
    trained = []
    for spec in (args.model, args.plain):
        torch.manual_seed(args.seed)
        model, prov = api.load_model(spec, **kw)
        print(f"training {spec} on {train_data.spec} for {args.epochs} epochs ...")
        train(model, train_data, test_data, args.epochs, out / "models" / spec, schedule="cosine", lr=0.05,
              normalize="none" if not args.data else "cifar10", seed=args.seed,
              config=dict(model=spec, command="resprobe demo"))
        from .io.checkpoint import sha256_file
        weights = out / "models" / spec / "model.pt"
        prov.update(weights=str(weights), weights_sha256=sha256_file(weights))
        trained.append((spec, model, prov))
    res = full_report(trained[0], test_data, trained[1], "fast", "none" if not args.data else "cifar10", "cpu",
                      args.seed, out)
    for k, v in res.items():
        print(f"{k:>9}: {v['verdict']} ({v['seconds']:.1f} s)")
    print(f"report: {(out / 'report.html').resolve()}")
    return 0


def _multi_model_args(q) -> None:
    q.add_argument("--model", action="append", required=True,
                   help="model spec; repeat with --weights to compare models (e.g. a ResNet and its plain twin)")
    q.add_argument("--weights", action="append", help="checkpoint for each --model, in order ('none': random init)")
    q.add_argument("--label", action="append", help="display name for each --model (default: its spec)")
    q.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of checkpoints")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resprobe", description="Probe why residual networks work.")
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("info", help="table of a model's residual blocks")
    _model_args(q)
    q.add_argument("--input-size", help="C,H,W (default 3,32,32; 3,224,224 for torchvision)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("eval", help="error and loss of a model on a data set")
    _model_args(q)
    _data_args(q)
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("train", help="train a model (He et al. recipe by default)")
    _model_args(q)
    _data_args(q, split="train")
    q.add_argument("--epochs", type=int, required=True)
    q.add_argument("--out", required=True, help="folder for last.pt, model.pt, metrics.csv, config.json")
    q.add_argument("--lr", type=float, default=0.1)
    q.add_argument("--momentum", type=float, default=0.9)
    q.add_argument("--weight-decay", type=float, default=1e-4)
    q.add_argument("--schedule", default="step", choices=["step", "cosine", "constant"])
    q.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    q.add_argument("--test-data", help="data spec of the test split when it lives elsewhere (default: --data)")
    q.add_argument("--test-limit", type=int, help="evaluate on a seeded subset of the test split")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    q.set_defaults(func=cmd_train, batch_size=128)

    q = sub.add_parser("lesion", help="delete, sample or reorder residual blocks (Veit et al. 2016)")
    _multi_model_args(q)
    _data_args(q)
    q.add_argument("--mode", default="single", choices=["single", "set", "random-k", "reorder"])
    q.add_argument("--blocks", help="--mode set: block names, comma separated (e.g. layer1.3,layer2.5)")
    q.add_argument("--k", help="random-k: numbers of deleted blocks; reorder: numbers of random swaps. "
                                "K, LO:HI (inclusive), LO:HI:STEP or a,b,c (default 1:n)")
    q.add_argument("--samples", type=int, default=20, help="random subsets / orders per k (default 20)")
    q.add_argument("--exclude-downsampling", action="store_true", help="random-k: never delete downsampling blocks")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="folder for lesion.csv, lesion.json and plots; rerun to resume")
    q.set_defaults(func=cmd_lesion)

    q = sub.add_parser("identity", help="per-block distance to the identity (He et al. Fig. 7, Jastrzebski et al.)")
    _multi_model_args(q)
    _data_args(q)
    q.add_argument("--grad", action="store_true", help="also cos(F(x), dL/dx) (one backward pass per batch)")
    q.add_argument("--threshold", type=float, default=0.3, help="effective depth: blocks with ||F||/||S|| above it")
    q.add_argument("--lesion-check", action="store_true",
                   help="also measure the error with all near-identity blocks deleted together")
    q.add_argument("--cka-minibatch", type=int, default=32, help="images per CKA minibatch (unbiased HSIC)")
    q.add_argument("--metrics", default="norms,cka,response_std",
                   help="metric groups (comma separated): norms (||F||/||S||, relative change, cosine), cka, "
                        "response_std; fewer groups, less time (default: all)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_identity)

    q = sub.add_parser("paths", help="path lengths and gradient per path length (Veit et al. 2016 Fig. 6)")
    _multi_model_args(q)
    _data_args(q)
    q.add_argument("--samples", type=int, default=20, help="routings sampled per path length k")
    q.add_argument("--k", help="path lengths: K, LO:HI (inclusive; 'n' = number of blocks), a,b,c (default 0:n)")
    q.add_argument("--share", type=float, default=0.9, help="gradient share of the effective range (default 0.9)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_paths, batch_size=64)

    q = sub.add_parser("amplify", help="perturbation gains per block: is a residual block a differential amplifier?")
    _multi_model_args(q)
    _data_args(q)
    q.add_argument("--eps", default="1e-4,1e-3,1e-2", help="relative perturbation sizes (comma separated)")
    q.add_argument("--power-iters", type=int, default=10, help="power iterations for the Jacobian spectral norm")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_amplify, batch_size=128)

    q = sub.add_parser("report", help="every probe, one report with a verdict per conjecture")
    _model_args(q, weights_required=False)
    q.add_argument("--label", help="display name of the model")
    q.add_argument("--plain", help="spec of the plain twin (optional)")
    q.add_argument("--plain-weights", help="checkpoint of the plain twin")
    q.add_argument("--plain-label", help="display name of the plain twin")
    _data_args(q)
    q.add_argument("--budget", default="fast", choices=["fast", "full"])
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_report, batch_size=256)

    q = sub.add_parser("demo", help="offline: train a small ResNet and its plain twin, then write the report")
    q.add_argument("--out", required=True)
    q.add_argument("--model", default="cifar_resnet14")
    q.add_argument("--plain", default="cifar_plain14")
    q.add_argument("--epochs", type=int, default=6)
    q.add_argument("--data", help="train on this data set instead of the synthetic one (e.g. cifar10)")
    q.add_argument("--test-data")
    q.add_argument("--data-root")
    q.add_argument("--download", action="store_true")
    q.add_argument("--limit", type=int)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_demo)

    q = sub.add_parser("gradcorr", help="shattered gradients (Balduzzi et al. 2017)")
    q.add_argument("target", nargs="?", choices=["synthetic"],
                   help="'synthetic': f: R -> R networks at initialisation; omit it for trained networks (--model)")
    q.add_argument("--model", action="append", help="trained networks: model spec (repeat to compare)")
    q.add_argument("--weights", action="append", help="checkpoint for each --model")
    q.add_argument("--label", action="append", help="display name for each --model")
    q.add_argument("--trust-checkpoint", action="store_true")
    q.add_argument("--data", help="trained networks: data spec the lines start from")
    q.add_argument("--data-root")
    q.add_argument("--download", action="store_true")
    q.add_argument("--split", default="test")
    q.add_argument("--normalize", default=None, choices=["imagenet", "cifar10", "none"])
    q.add_argument("--limit", type=int)
    q.add_argument("--device", default="cpu")
    q.add_argument("--lines", type=int, default=8, help="trained networks: number of lines")
    q.add_argument("--line", default="direction", choices=["direction", "between"],
                   help="x0 + t*u with a random unit direction u, or the segment between two images")
    q.add_argument("--span", type=float, default=0.1, help="direction lines: t in [-span, span) * ||x0||")
    q.add_argument("--grad-target", default="loss", choices=["loss", "logit"],
                   help="differentiate the cross-entropy loss or the true-class logit")
    q.add_argument("--kinds", default="ff,ff-bn,res,res-bn,ff-ll", help="comma-separated: ff, ff-bn, res, res-bn, ff-ll")
    q.add_argument("--depths", default="1,2,4,8,16,24,32,50")
    q.add_argument("--seeds", type=int, default=20, help="random initialisations per (kind, depth)")
    q.add_argument("--width", type=int, default=200)
    q.add_argument("--points", type=int, default=256, help="points per line (synthetic: on [-2, 2))")
    q.add_argument("--beta", type=float, default=0.1, help="branch scale of the 'res' kind (no BN)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True)
    q.set_defaults(func=cmd_gradcorr)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _expected_errors() as e:
        print(f"resprobe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resprobe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
