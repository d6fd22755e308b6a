"""Command line: thin wrappers over :mod:`resprobe.api`. ``resprobe --help``.

Every command checks its flags and its output folder before any long work; a user error is one line on
stderr and exit status 2 (``--debug`` shows the traceback); anything else is a bug and keeps its
traceback. Under ``torchrun`` the work is shared by the processes and rank 0 writes the results.
"""
from __future__ import annotations

import argparse
import math
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Optional

from . import __version__, api
from . import distributed as dist
from . import checks
from .errors import UsageError, UserError
from .outputs import check_same_settings, claim
from .progress import note, set_quiet

__all__ = ["main", "build_parser", "RangeSpec"]


# --- argument types: a bad value names its flag (argparse adds "argument --flag:") ------------------------

def _typed(check, *a, **kw):
    """An argparse type from a :mod:`resprobe.checks` validator (the message names the flag's value)."""
    def parse(text: str):
        try:
            return check("value", text, *a, **kw)
        except UsageError as e:
            raise argparse.ArgumentTypeError(e.message.replace("value ", "", 1)) from None
    parse.__name__ = getattr(check, "__name__", "value")
    return parse


MAX_INT = 2 ** 31 - 1   # counts (images, epochs, points, samples): beyond this torch's int32 indexing fails


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    if v > MAX_INT:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {MAX_INT:,}, got {text[:30]}")
    return v


seed_arg = _typed(lambda name, t: checks.seed(t, name))
n_boot_arg = _typed(lambda name, t: checks.n_boot(t, name))
def _cka_images(text: str):
    """--cka-images: a positive integer, or 'all' (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {v}")
    return v


def fraction(text: str) -> float:
    v = positive_float(text)
    if not v < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {v}")
    return v


def float_list(text: str) -> tuple:
    try:
        vals = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one number")
    if not all(map(math.isfinite, vals)):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return vals


def int_list(text: str) -> tuple:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1 or max(vals) > MAX_INT:
        raise argparse.ArgumentTypeError(f"expected positive integers (up to {MAX_INT:,}), got {text[:60]!r}")
    return vals


def str_list(text: str) -> tuple:
    vals = tuple(t.strip() for t in text.split(",") if t.strip())
    if not vals:
        raise argparse.ArgumentTypeError("expected comma-separated names")
    return vals


class RangeSpec:
    """``K``, ``LO:HI`` (inclusive), ``LO:HI:STEP`` or ``a,b,c``; ``n`` stands for the number of units."""

    def __init__(self, text: str):
        self.text = text.strip()
        try:
            self.resolve(1000, check=False)
        except UsageError as e:
            raise argparse.ArgumentTypeError(e.message) from None

    def __repr__(self) -> str:
        return self.text

    def resolve(self, n: int, lo: int = 0, check: bool = True) -> tuple:
        t = self.text.replace("n", str(n))
        how = "use K, LO:HI (inclusive), LO:HI:STEP or a,b,c"

        def ints(xs):
            try:
                return [int(x) if x.strip() else None for x in xs]
            except ValueError:
                raise UsageError(f"cannot read range {self.text!r}", how) from None
        if "," in t:
            vals = [v for v in ints(t.split(",")) if v is not None]
        elif ":" in t:
            parts = ints(t.split(":"))
            if len(parts) > 3:
                raise UsageError(f"cannot read range {self.text!r}", how)
            a = parts[0] if parts[0] is not None else lo
            b = parts[1] if len(parts) > 1 and parts[1] is not None else n
            step = parts[2] if len(parts) > 2 and parts[2] is not None else 1
            if step < 1:
                raise UsageError(f"range {self.text!r}: the step must be a positive integer, got {step}")
            if check and not (lo <= a <= n and lo <= b <= n):
                raise UsageError(f"range {self.text!r} must lie in {lo}..{n}; got {a}..{b}")
            if (b - a) // step + 1 > checks.MAX_RANGE:
                raise UsageError(f"range {self.text!r} holds more than {checks.MAX_RANGE:,} values", how)
            vals = list(range(a, b + 1, step))
        else:
            vals = ints([t]) if t.strip() else []
        if check:
            bad = [v for v in vals if not lo <= v <= n]
            if bad or not vals:
                raise UsageError(f"range {self.text!r} must lie in {lo}..{n}; got {bad[:5] or 'nothing'}")
        return tuple(vals)


# --- shared options --------------------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of every random choice (subsets, directions, bootstrap)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    return p


def _data() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="cifar10 | imagefolder:PATH | fashion-mnist | synthetic(...)")
    g.add_argument("--data-root", help="folder holding the data set (cifar10, fashion-mnist)")
    g.add_argument("--download", action="store_true", help="allow downloading the data set (checksum verified)")
    g.add_argument("--split", default="test", help="split to use (folders without split folders: all images)")
    g.add_argument("--limit", type=positive_int, help="a seeded random subset of N images (not the first N)")
    g.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (results do not depend on it)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: mixed precision for sweeps (opt-in; predictions may change)")
    g.add_argument("--n-boot", type=n_boot_arg, default=1000, help="bootstrap resamples for CIs (100-100,000)")
    return p


def _models(multi: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("networks")
    g.add_argument("--model", action="append" if multi else None, required=True,
                   help="model spec: cifar_resnet56, cifar_plain20, torchvision:resnet50, timm:NAME(...), or "
                        "package.module:factory (imports and runs your code)" + (" (repeat to compare)" if multi else ""))
    g.add_argument("--weights", action="append" if multi else None,
                   help="checkpoint of each --model, in order; several comma-separated files are seeds of one network")
    g.add_argument("--label", action="append" if multi else None,
                   help="display name of each --model (default: the weights' folder or file name)")
    g.add_argument("--random-init", action="store_true",
                   help="allow models without --weights (randomly initialised: for tests and demos)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling of checkpoints (can run arbitrary code: only for files you trust)")
    g.add_argument("--trust-code", action="store_true",
                   help="allow a package.module:factory spec to import that module and run its code")
    g.add_argument("--normalize", choices=["imagenet", "cifar10", "none"],
                   help="input normalization (default: recorded by resprobe train beside the weights, else imagenet, "
                        "which the He et al. checkpoints need)")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="probe networks with NaN/inf weights or activations, marking the affected rows")
    return p


def _out(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=required, help="output folder (checked and locked before the work starts)")
    return p


def _spec(args, **over) -> api.RunSpec:
    return api.RunSpec(batch_size=args.batch_size, device=str(api.resolve_device(args.device)), seed=args.seed,
                       n_boot=getattr(args, "n_boot", 1000), progress=not args.quiet,
                       dtype=getattr(args, "dtype", "float32"), allow_nonfinite=getattr(args, "allow_nonfinite", False),
                       **over)


def _weights_lists(args) -> list:
    ws = args.weights or []
    if ws and len(ws) != len(args.model):
        raise UsageError(f"give one --weights per --model ({len(args.model)} models, {len(ws)} weights)",
                         "several seeds of one model go in one --weights, comma separated")
    return [w.split(",") for w in ws] if ws else [None] * len(args.model)


def _load(args):
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
    subjects = api.load_subjects(args.model, _weights_lists(args), data, args.label, args.normalize,
                                 args.trust_checkpoint, args.random_init, getattr(args, "allow_nonfinite", False),
                                 seed=args.seed, trust_code=args.trust_code)
    return data, subjects


_NOT_SETTINGS = ("func", "quiet", "debug", "out", "device", "cmd", "batch_size")  # results do not depend on these


def _settings(args) -> dict:
    """The command's settings as recorded in its results (what a rerun into the same --out must repeat)."""
    v = {k: x for k, x in vars(args).items() if k not in _NOT_SETTINGS and not callable(x)}
    return json.loads(json.dumps(dict(v, command=args.cmd), default=str))


@contextlib.contextmanager
def _output(out, args=None, stem: Optional[str] = None):
    """Claim ``out`` (checked and locked before any work); with ``stem``, refuse to replace that study's
    results of other settings."""
    if dist.is_main():
        with claim(out) as o:
            if stem is not None:
                check_same_settings(o, stem, _settings(args))
            yield o
    else:
        yield Path(out)


def _finish(result, out, t0: float, args=None) -> int:
    if args is not None:
        result.provenance = dict(result.provenance or {}, command=_settings(args))
    if dist.is_main():
        files = api.save(result, out)
        for line in result.findings:
            print(line.replace("**", ""))
        for v in result.verdicts:
            print(f"verdict: {v.verdict} — {v.conjecture} ({v.statistic_name} = "
                  f"{_num(v.statistic)} [{_num(v.ci_low)}, {_num(v.ci_high)}], {v.scope})"
                  + (f"; {v.reason}" if v.reason else ""))
        print(f"{len(files)} files in {out} ({time.time() - t0:.0f} s); report: {Path(out) / 'report.html'}")
    return 0


def _num(v) -> str:
    from .fmt import num
    return num(v)


# --- commands --------------------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from .anatomy import anatomy
    if not args.weights and not args.random_init:
        args.random_init = True  # the structure does not depend on the weights
    model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint, trust_code=args.trust_code)
    shape = tuple(args.input_size) if args.input_size else api.default_input_shape(model)
    if math.prod(shape) > 2 ** 26:
        raise UsageError(f"--input-size {','.join(map(str, shape))} is {math.prod(shape):,} values per input",
                         f"give at most {2 ** 26:,} (e.g. 3,4096,4096)")
    view = anatomy(model, shape)
    rows = view.table()
    if args.json:
        print(json.dumps(dict(prov, input_shape=list(shape), n_units=len(rows), n_blocks=len(view.blocks),
                              units=rows), default=list))
        return 0
    print(f"{args.model}: {len(rows)} units in {len(view.blocks)} blocks and {view.n_stages} stage{'s' * (view.n_stages != 1)} "
          f"({sum(u.residual for u in view)} residual), input {shape}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    hdr = f"{'#':>3}  {'unit':<28} {'kind':<10} {'stage':>5} {'idx':>3}  {'in -> out':<30} {'shortcut':<10} {'params':>10}"
    print(hdr)
    print("-" * len(hdr))
    for i, r in enumerate(rows):
        io = f"{'x'.join(map(str, r['in_shape']))} -> {'x'.join(map(str, r['out_shape']))}"
        print(f"{i:>3}  {r['name']:<28} {r['kind']:<10} {r['stage']:>5} {max(r['index_in_stage'], 0):>3}  {io:<30} "
              f"{r['shortcut']:<10} {r['params']:>10,}")
    return 0


def cmd_weights(args) -> int:
    from .io import published
    rows = []
    for e in published.entries().values():
        where = Path(e.file) if e.local else published.cache_folder() / e.file
        rows.append(dict(e.describe(), cached=where.is_file(), path=str(where)))
    if args.json:
        print(json.dumps(dict(cache=str(published.cache_folder()), weights=rows)))
        return 0
    print(f"checkpoints by name (--weights NAME; downloads go to {published.cache_folder()}, sha256-checked):")
    for r in rows:
        err = "" if r["error"] is None else f"published error {r['error']:.2%}"
        jpeg = "" if r["jpeg_error"] is None else f", {r['jpeg_error']:.2%} on the JPEG copy"
        state = "in the repository" if not r["url"] else ("cached" if r["cached"] else "not downloaded")
        print(f"  {r['name']:<28} --model {r['model']:<18} {err}{jpeg} [{state}]")
    return 0


def cmd_eval(args) -> int:
    spec = _spec(args)
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
    [s] = api.load_subjects([args.model], [args.weights], data, [args.label], args.normalize, args.trust_checkpoint,
                            args.random_init, args.allow_nonfinite, seed=args.seed, trust_code=args.trust_code)
    s.model.to(spec.torch_device)
    t0 = time.time()
    res = api.evaluate(s.model, data, spec, s.normalize)
    if not dist.is_main():
        return 0
    out = dict(res, model=args.model, weights=s.provenance["weights"], weights_sha256=s.provenance["weights_sha256"],
               data=args.data, split=data.split, normalize=s.normalize, limit=args.limit, device=spec.device,
               seconds=round(time.time() - t0, 3))
    if args.json:
        from .report.tables import clean
        print(json.dumps(clean(out), allow_nan=False))
    else:
        print(f"{args.model} on {args.data} [{data.split}], {res['n_images']} images: error {res['error']:.4%} "
              f"({res['n_wrong']} wrong), loss {res['loss']:.4f}"
              + (f", top-5 error {res['top5_error']:.4%}" if "top5_error" in res else ""))
    return 0


def cmd_train(args) -> int:
    import torch

    from .training import Recipe, train
    recipe = Recipe(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    batch_size=args.batch_size, schedule=args.schedule, optimizer=args.optimizer,
                    warmup_epochs=args.warmup_epochs, normalize=args.normalize or "imagenet",
                    augment=not args.no_augment, seed=args.seed)
    dev = api.resolve_device(args.device)
    with claim(args.out):
        torch.manual_seed(args.seed)
        train_data = api.load_data(args.data, "train", args.data_root, args.download, args.limit)
        test_data = api.load_data(args.test_data or args.data, "test", args.data_root, args.download, args.test_limit)
        if train_data.describe().get("content_sha256") == test_data.describe().get("content_sha256") and \
                train_data.split == test_data.split:
            raise UsageError(f"the training and test images are the same ({train_data.spec} has no train/test split "
                             "folders)", "pass --test-data with held-out images")
        model, prov = api.load_model(args.model, args.weights, args.trust_checkpoint,
                                     num_classes=train_data.num_classes, in_channels=train_data.input_shape[0],
                                     trust_code=args.trust_code)
        cfg = dict(model=args.model, init_weights=prov["weights"], command=" ".join(["resprobe"] + sys.argv[1:]),
                   versions=api.versions(), device=str(dev))
        df = train(model, train_data, test_data, recipe, args.out, dev, args.resume, args.overwrite, not args.quiet, cfg)
    last = df.iloc[-1]
    print(f"trained {args.model}: final train error {last.train_error:.4f}, test error {last.test_error:.4f}; "
          f"weights in {Path(args.out) / 'model.pt'}, metrics in {Path(args.out) / 'metrics.csv'}")
    return 0


def cmd_lesion(args) -> int:
    from .report.store import LesionStore
    t0 = time.time()
    spec = _spec(args)
    with _output(args.out) as out:
        data, subjects = _load(args)
        from .anatomy import anatomy
        n = min(len(anatomy(s.model)) for s in subjects)
        ks = args.k.resolve(10 * n if args.mode == "reorder" else n, lo=1) if args.k else None
        plan = api.lesion.LesionPlan(args.mode, units=args.units or (), ks=ks, samples=args.samples,
                                     exclude_downsampling=args.exclude_downsampling, granularity=args.granularity)
        result = api.lesion.run(subjects, data, spec, plan, LesionStore(out) if dist.is_main() else None)
        for label, n_reused in result.extras.get("reused", {}).items():
            if n_reused:
                note(f"{label}: resumed — {n_reused} configurations reused from {out / 'lesion.csv'}")
        return _finish(result, out, t0)


def cmd_identity(args) -> int:
    t0 = time.time()
    options = api.identity.IdentityOptions(metrics=args.metrics, grad=args.grad, cka_minibatch=args.cka_minibatch,
                                           cka_images=args.cka_images,
                                           threshold=args.threshold, lesion_check=args.lesion_check)
    spec = _spec(args)
    with _output(args.out, args, "identity") as out:
        data, subjects = _load(args)
        return _finish(api.identity.run(subjects, data, spec, options), out, t0, args)


def cmd_paths(args) -> int:
    t0 = time.time()
    spec = _spec(args)
    with _output(args.out, args, "paths") as out:
        data, subjects = _load(args)
        from .anatomy import anatomy
        n = min(sum(u.residual for u in anatomy(s.model)) for s in subjects)
        options = api.paths.PathsOptions(ks=args.k.resolve(n) if args.k else None, samples=args.samples,
                                         share=args.share)
        return _finish(api.paths.run(subjects, data, spec, options), out, t0, args)


def cmd_amplify(args) -> int:
    t0 = time.time()
    options = api.amplify.AmplifyOptions(eps=args.eps, power_iters=args.power_iters)
    spec = _spec(args)
    with _output(args.out, args, "amplify") as out:
        data, subjects = _load(args)
        return _finish(api.amplify.run(subjects, data, spec, options), out, t0, args)


def cmd_prune(args) -> int:
    t0 = time.time()
    options = api.prune.PruneOptions(ns=args.n)
    spec = _spec(args)
    with _output(args.out, args, "prune") as out:
        data, subjects = _load(args)
        return _finish(api.prune.run(subjects, data, spec, options), out, t0, args)


def cmd_gradcorr(args) -> int:
    t0 = time.time()
    if args.target == "synthetic":
        options = api.gradcorr.SyntheticOptions(kinds=args.kinds, depths=args.depths, seeds=args.seeds,
                                                width=args.width, points=args.points, beta=args.beta)
        spec = api.RunSpec(seed=args.seed, progress=not args.quiet, n_boot=args.n_boot)
        with _output(args.out, args, "gradcorr") as out:
            return _finish(api.gradcorr.run_synthetic(options, spec), out, t0, args)
    if not args.model or not args.data:
        raise UsageError("resprobe gradcorr needs 'synthetic' or --model ... --data ...",
                         "e.g. resprobe gradcorr synthetic --out results/gc")
    options = api.gradcorr.LineOptions(lines=args.lines, points=args.points, mode=args.line, span=args.span,
                                       target=args.grad_target)
    spec = _spec(args)
    with _output(args.out, args, "gradcorr") as out:
        data, subjects = _load(args)
        return _finish(api.gradcorr.run(subjects, data, spec, options), out, t0, args)


def cmd_report(args) -> int:
    from .report.full import BUDGETS
    spec = _spec(args)
    with _output(args.out, args, "report") as out:
        data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
        specs, weights, labels = [args.model], [args.weights.split(",") if args.weights else None], [args.label]
        if args.plain:
            specs.append(args.plain)
            weights.append(args.plain_weights.split(",") if args.plain_weights else None)
            labels.append(args.plain_label)
        subjects = api.load_subjects(specs, weights, data, labels, args.normalize, args.trust_checkpoint,
                                     args.random_init, args.allow_nonfinite, seed=args.seed, trust_code=args.trust_code)
        b = BUDGETS[args.budget]
        if b.images is not None and b.images < len(data):
            note(f"budget {args.budget}: lesions and identity use {b.images} of the {len(data)} images, amplification "
                 f"and paths {b.amplify_images} and {b.paths_images} (--budget full uses all)")
        sections = api.full_report(subjects, data, spec, args.budget, out, command=_settings(args))
    if dist.is_main():
        for k, v in sections.items():
            print(f"{k:>20}: {v['verdict']} ({v['seconds']:.1f} s)")
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_demo(args) -> int:
    import torch

    from .training import Recipe, train
    out = Path(args.out)
    with claim(out):
        train_data = api.load_data("synthetic(n=2000)", "train")
        test_data = api.load_data("synthetic(n=500)", "test")
        subjects = []
        for spec_name in (args.model, args.plain):
            torch.manual_seed(args.seed)
            model, prov = api.load_model(spec_name, num_classes=train_data.num_classes)
            note(f"training {spec_name} on {train_data.spec} for {args.epochs} epochs ...")
            folder = out / "models" / spec_name
            train(model, train_data, test_data, Recipe(args.epochs, lr=0.05, schedule="cosine", seed=args.seed),
                  folder, overwrite=True, progress_bar=not args.quiet,
                  config=dict(model=spec_name, command="resprobe demo"))
            weights = folder / "model.pt"
            subjects += api.load_subjects([spec_name], [[str(weights)]], test_data, [spec_name], "none")
        sections = api.full_report(subjects, test_data, api.RunSpec(seed=args.seed, progress=not args.quiet),
                                   "fast", out)
    for k, v in sections.items():
        print(f"{k:>20}: {v['verdict']} ({v['seconds']:.1f} s)")
    print(f"report: {(out / 'report.html').resolve()}")
    return 0


# --- the parser ---------------------------------------------------------------------------------------------

class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error policy: one line naming the problem and where help is, status 2."""

    def error(self, message: str):
        self.exit(2, f"resprobe: error: {message} — see `{self.prog} --help`\n")


def _sub(sub, name: str, help_: str, parents=(), **kw) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_, description=help_, parents=list(parents), formatter_class=_Formatter,
                          **kw)


def _add_info_eval(sub, common) -> None:
    q = _sub(sub, "info", "the residual units of a model: name, kind, stage, shapes, shortcut, parameters",
             [common, _models(multi=False)])
    q.add_argument("--input-size", type=int_list, help="C,H,W (default: the model's own, else 3,32,32; 3,224,224 "
                                                       "for torchvision)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_info)
    q = _sub(sub, "eval", "error and loss of a model on a data set", [common, _models(multi=False), _data()])
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_eval)
    q = _sub(sub, "weights", "the published checkpoints resprobe fetches by name (--weights he2016:resnet56)",
             [common])
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_weights)


def _add_train(sub, common) -> None:
    q = _sub(sub, "train", "train a model (He et al. recipe by default) into --out",
             [common, _models(multi=False), _data(), _out()])
    q.add_argument("--epochs", type=positive_int, required=True, help="number of epochs")
    q.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate")
    q.add_argument("--momentum", type=_typed(checks.number, 0, 1, hi_open=True), default=0.9,
                   help="SGD momentum, in [0, 1)")
    q.add_argument("--weight-decay", type=_typed(checks.number, 0), default=1e-4, help="weight decay (>= 0)")
    q.add_argument("--schedule", default="step", choices=["step", "cosine", "constant"],
                   help="step: lr/10 at 50%% and 75%% of the epochs (He et al.)")
    q.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="optimizer")
    q.add_argument("--warmup-epochs", type=_typed(checks.integer, 0, MAX_INT), default=0, help="linear learning-rate warm-up over these epochs")
    q.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    q.add_argument("--test-data", help="data spec of the test split when it lives elsewhere (default: --data)")
    q.add_argument("--test-limit", type=positive_int, help="evaluate on a seeded subset of the test split")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    q.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    q.set_defaults(func=cmd_train, batch_size=128)


def _add_probes(sub, common) -> None:
    parents = [common, _models(), _data(), _out()]
    q = _sub(sub, "lesion", "delete, sample or reorder residual units (Veit et al. 2016)", parents)
    q.add_argument("--mode", default="single", choices=[m.value for m in api.lesion.LesionMode],
                   help="single: each unit alone; set: --units together; random-k: k random units; reorder: k "
                        "random swaps of branches; prune-by-similarity: the most similar range of k units vs random k")
    q.add_argument("--units", "--blocks", type=str_list, help="mode set: unit or block names, comma separated")
    q.add_argument("--k", type=RangeSpec, help="random-k/prune: numbers of deleted units; reorder: numbers of swaps. "
                                               "K, LO:HI (inclusive), LO:HI:STEP or a,b,c; n = number of units "
                                               "(default: 1:n)")
    q.add_argument("--samples", type=positive_int, default=20, help="random subsets or orders per k")
    q.add_argument("--exclude-downsampling", action="store_true", help="random-k: never delete downsampling units")
    q.add_argument("--granularity", default="unit", choices=["unit", "block"],
                   help="delete units, or whole blocks (a transformer block's attention and MLP together)")
    q.set_defaults(func=cmd_lesion)
    q = _sub(sub, "identity", "per-unit distance to the identity (He et al. Fig. 7, Jastrzebski et al.)", parents)
    q.add_argument("--grad", action="store_true", help="also cos(F(x), dL/dx) (one backward pass per batch)")
    q.add_argument("--threshold", type=_typed(checks.number, 0, 1, lo_open=True), default=0.3,
                   help="near identity: the 95%% CI of ||F||/||S|| below it; active: above it")
    q.add_argument("--lesion-check", action="store_true", help="also the error with every near-identity unit deleted")
    q.add_argument("--cka-minibatch", type=positive_int, default=32, help="images per CKA minibatch (unbiased HSIC)")
    q.add_argument("--cka-images", type=_cka_images, default=api.identity.CKA_IMAGES,
                   help="images in CKA's seeded subset, or 'all'")
    q.add_argument("--metrics", type=str_list, default=api.identity.METRIC_GROUPS,
                   help="metric groups: norms (ratios, cosines, block influence), cka, response_std")
    q.set_defaults(func=cmd_identity)
    q = _sub(sub, "paths", "path lengths and the gradient per path length (Veit et al. 2016 Fig. 6)", parents)
    q.add_argument("--samples", type=positive_int, default=20, help="routings sampled per path length k")
    q.add_argument("--k", type=RangeSpec, help="path lengths (K, LO:HI, a,b,c; n = number of residual units); "
                                               "default: every length 0:n")
    q.add_argument("--share", type=fraction, default=0.9, help="gradient share of the effective range (80%%, 90%% "
                                                               "and 95%% are reported too)")
    q.set_defaults(func=cmd_paths, batch_size=64)
    q = _sub(sub, "amplify", "perturbation gains per unit: is a residual unit a differential amplifier?", parents)
    q.add_argument("--eps", type=float_list, default=(1e-4, 1e-3, 1e-2), help="relative perturbation sizes")
    q.add_argument("--power-iters", type=positive_int, default=10, help="power iterations for Jacobian spectral norms")
    q.set_defaults(func=cmd_amplify, batch_size=64)
    q = _sub(sub, "prune", "angular distance between unit ranges and block influence (Gromov et al.; ShortGPT)",
             parents)
    q.add_argument("--n", type=int_list, default=None, help="range lengths (default: 1,2,4, those that fit the network)")
    q.set_defaults(func=cmd_prune)


def _add_gradcorr(sub, common) -> None:
    q = _sub(sub, "gradcorr", "shattered gradients (Balduzzi et al. 2017): 'synthetic' at initialisation, or "
                              "trained networks (--model, --data)", [common, _out()])
    q.add_argument("target", nargs="?", choices=["synthetic"], help="'synthetic': f: R -> R networks at "
                                                                    "initialisation; omit it for trained networks")
    g = q.add_argument_group("trained networks")
    for flag, kw in (("--model", dict(action="append", help="model spec (repeat to compare)")),
                     ("--weights", dict(action="append", help="checkpoint(s) of each --model")),
                     ("--label", dict(action="append", help="display name of each --model")),
                     ("--random-init", dict(action="store_true", help="allow models without --weights")),
                     ("--trust-checkpoint", dict(action="store_true", help="allow full unpickling of checkpoints")),
                     ("--trust-code", dict(action="store_true", help="allow a package.module:factory spec to run "
                                                                     "its module's code")),
                     ("--normalize", dict(choices=["imagenet", "cifar10", "none"], help="input normalization")),
                     ("--allow-nonfinite", dict(action="store_true", help="mark non-finite rows instead of stopping")),
                     ("--data", dict(help="data spec the lines start from")), ("--data-root", dict(help="data folder")),
                     ("--download", dict(action="store_true", help="allow downloading the data set")),
                     ("--split", dict(default="test", help="split to use")),
                     ("--limit", dict(type=positive_int, help="seeded subset of the data")),
                     ("--batch-size", dict(type=positive_int, default=64,
                                           help="points per backward pass (memory follows it; results do not)")),
                     ("--lines", dict(type=positive_int, default=8, help="number of lines (at least 2)")),
                     ("--line", dict(default="direction", choices=["direction", "between"],
                                     help="x0 + t*u (random unit u) or the segment between two images")),
                     ("--span", dict(type=positive_float, default=0.1, help="direction lines: t in [-span, span)*|x0|")),
                     ("--grad-target", dict(default="loss", choices=["loss", "logit"], help="what is differentiated"))):
        g.add_argument(flag, **kw)
    g = q.add_argument_group("synthetic")
    g.add_argument("--kinds", type=str_list, default=api.gradcorr.KINDS, help="ff, ff-bn, res, res-bn, ff-ll")
    g.add_argument("--depths", type=int_list, default=(1, 2, 4, 8, 16, 24, 32, 50), help="depths")
    g.add_argument("--seeds", type=positive_int, default=20, help="random initialisations per (kind, depth)")
    g.add_argument("--width", type=positive_int, default=200, help="units per layer")
    g.add_argument("--beta", type=_typed(checks.number, 0, 100), default=0.1,
                   help="branch scale of the 'res' kind (no BN), in [0, 100]")
    q.add_argument("--points", type=positive_int, default=256, help="points per line (synthetic: on [-2, 2))")
    q.add_argument("--n-boot", type=n_boot_arg, default=1000, help="bootstrap resamples (100-100,000)")
    q.set_defaults(func=cmd_gradcorr, dtype="float32")


def _add_report(sub, common) -> None:
    q = _sub(sub, "report", "every study, one page with a verdict per conjecture", [common, _data(), _out()])
    g = q.add_argument_group("networks")
    g.add_argument("--model", required=True, help="model spec of the residual network")
    g.add_argument("--weights", help="its checkpoint; several comma-separated files are seeds")
    g.add_argument("--label", help="display name of the model")
    g.add_argument("--plain", help="spec of the plain twin, trained with the same recipe (the comparative verdicts "
                                   "need it)")
    g.add_argument("--plain-weights", help="its checkpoint(s), comma separated, seeds paired with --weights")
    g.add_argument("--plain-label", help="display name of the plain twin")
    g.add_argument("--random-init", action="store_true", help="allow networks without weights")
    g.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of checkpoints")
    g.add_argument("--trust-code", action="store_true",
                   help="allow a package.module:factory spec to import that module and run its code")
    g.add_argument("--normalize", choices=["imagenet", "cifar10", "none"], help="input normalization")
    g.add_argument("--allow-nonfinite", action="store_true", help="mark non-finite rows instead of stopping")
    q.add_argument("--budget", default="fast", choices=["fast", "full"],
                   help="fast: 500 images for lesions and identity, 64 for amplification and paths, small sweeps "
                        "(minutes on a CPU); full: every image and the papers' sample counts")
    q.set_defaults(func=cmd_report)
    q = _sub(sub, "demo", "offline: train a small ResNet and its plain twin on procedural images, then the report",
             [common, _out()])
    q.add_argument("--model", default="cifar_resnet14", help="residual network to train")
    q.add_argument("--plain", default="cifar_plain14", help="its plain twin")
    q.add_argument("--epochs", type=positive_int, default=6, help="training epochs of each")
    q.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="resprobe", description="Probe why residual networks work.", formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"resprobe {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = _common()
    _add_info_eval(sub, common)
    _add_train(sub, common)
    _add_probes(sub, common)
    _add_gradcorr(sub, common)
    _add_report(sub, common)
    return p


def _machine_error(e: BaseException) -> Optional[UserError]:
    """A full disk, a name too long, no permission or no memory, as the one line the user can act on."""
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and ("can't allocate memory" in str(e)
                                                                       or "out of memory" in str(e).lower())):
        return UserError("out of memory", "use fewer images (--limit), a smaller --batch-size or fewer bootstrap "
                         "resamples (--n-boot)")
    from .io.atomic import os_error
    return os_error(e, e.filename or "a file") if isinstance(e, OSError) else None


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    set_quiet(args.quiet)
    finished = False
    try:
        dist.init(getattr(args, "device", "cpu"))
        rc = args.func(args)
        finished = True
        return rc
    except UserError as e:
        if args.debug:
            raise
        print(f"resprobe: error: {e.one_line()}", file=sys.stderr)
        return 2
    except (MemoryError, OSError, RuntimeError) as e:  # the machine's limits: one line, not a traceback
        err = _machine_error(e)
        if err is None or args.debug:
            raise
        print(f"resprobe: error: {err.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resprobe: interrupted", file=sys.stderr)
        return 130
    finally:
        dist.shutdown(finished)


if __name__ == "__main__":
    sys.exit(main())
