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
from . import checks
from . import distributed as dist
from .flags import (MAX_INT, is_text, weights_lists, RangeSpec, data_flags, float_list, fraction, int_list, int_or_all,  # noqa: F401
                    model_flags, n_boot_arg, out_flags, positive_float, positive_int, run_flags, seed_arg, str_list,
                    typed)
from .errors import UsageError, UserError
from .fmt import num
from .io.atomic import machine_error
from .outputs import check_same_settings, claim
from .progress import note, set_quiet
from .study import Invocation
from .studies import studies
from .report.full import BUDGETS

__all__ = ["main", "build_parser", "RangeSpec"]


def _spec(args, **over) -> api.RunSpec:
    return api.RunSpec(batch_size=args.batch_size, device=str(api.resolve_device(args.device)), seed=args.seed,
                       n_boot=getattr(args, "n_boot", 1000), progress=not args.quiet,
                       dtype=getattr(args, "dtype", "float32"), allow_nonfinite=getattr(args, "allow_nonfinite", False),
                       **over)


def _access(args) -> api.Access:
    """What the flags allow a load to do (see :class:`resprobe.loading.Access`)."""
    return api.Access(trust=getattr(args, "trust_checkpoint", False), trust_code=getattr(args, "trust_code", False),
                      random_init=getattr(args, "random_init", False),
                      allow_nonfinite=getattr(args, "allow_nonfinite", False), seed=getattr(args, "seed", 0),
                      device_map=getattr(args, "device_map", None), offload_folder=getattr(args, "offload_folder", None))


def _load_text(args, specs, labels, weights):
    from .lm import TextRequest, load_text_subjects
    return load_text_subjects(specs, labels, weights, _access(args), TextRequest(args.data, args.seq_len or 128,
                                                                                 args.limit))


def _load(args):
    if is_text(args):
        return _load_text(args, args.model, args.label, weights_lists(args))
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
    subjects = api.load_subjects(args.model, weights_lists(args), data, args.label, args.normalize, _access(args))
    return data, subjects


_NOT_SETTINGS = ("func", "study", "quiet", "debug", "out", "device", "cmd", "batch_size")  # results do not depend on these


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
                  f"{num(v.statistic)} [{num(v.ci_low)}, {num(v.ci_high)}], {v.scope})"
                  + (f"; {v.reason}" if v.reason else ""))
        print(f"{len(files)} files in {out} ({time.time() - t0:.0f} s); report: {Path(out) / 'report.html'}")
    return 0


# --- commands --------------------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from .anatomy import anatomy
    if not args.weights and not args.random_init:
        args.random_init = True  # the structure does not depend on the weights
    model, prov = api.load_model(args.model, args.weights, _access(args))
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
    if is_text(args):
        from .lm import eval_text_command
        return eval_text_command(args, spec, _access(args))
    data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
    [s] = api.load_subjects([args.model], [args.weights], data, [args.label], args.normalize, _access(args))
    s.model.to(spec.torch_device)
    t0 = time.time()
    res = api.evaluate(s.model, data, spec, s.normalize)
    if not dist.is_main():
        return 0
    out = dict(res, model=args.model, weights=s.provenance["weights"], weights_sha256=s.provenance["weights_sha256"],
               data=args.data, split=data.split, normalize=s.normalize, limit=args.limit, device=spec.device,
               seconds=round(time.time() - t0, 3))
    if args.json:
        from .io.tables import clean
        print(json.dumps(clean(out), allow_nan=False))
    else:
        print(f"{args.model} on {args.data} [{data.split}], {res['n_images']} images: error {res['error']:.4%} "
              f"({res['n_wrong']} wrong), loss {res['loss']:.4f}"
              + (f", top-5 error {res['top5_error']:.4%}" if "top5_error" in res else ""))
    return 0


def cmd_train(args) -> int:
    import torch

    from .training import Recipe, TrainRun, train
    recipe = Recipe(epochs=args.epochs, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    batch_size=args.batch_size, schedule=args.schedule, optimizer=args.optimizer,
                    warmup_epochs=args.warmup_epochs, normalize=args.normalize or "imagenet",
                    augment=not args.no_augment, seed=args.seed)
    dev = api.resolve_device(args.device)
    if is_text(args):
        from .lm import train_text_command
        return train_text_command(args, recipe, dev, _access(args))
    with claim(args.out):
        torch.manual_seed(args.seed)
        train_data = api.load_data(args.data, "train", args.data_root, args.download, args.limit)
        test_data = api.load_data(args.test_data or args.data, "test", args.data_root, args.download, args.test_limit)
        if train_data.describe().get("content_sha256") == test_data.describe().get("content_sha256") and \
                train_data.split == test_data.split:
            raise UsageError(f"the training and test images are the same ({train_data.spec} has no train/test split "
                             "folders)", "pass --test-data with held-out images")
        model, prov = api.load_model(args.model, args.weights, _access(args), num_classes=train_data.num_classes,
                                     in_channels=train_data.input_shape[0])
        cfg = dict(model=args.model, init_weights=prov["weights"], command=" ".join(["resprobe"] + sys.argv[1:]),
                   versions=api.versions(), device=str(dev))
        df = train(model, train_data, test_data, recipe, args.out,
                   TrainRun(device=dev, resume=args.resume, overwrite=args.overwrite, progress_bar=not args.quiet,
                            config=cfg))
    last = df.iloc[-1]
    print(f"trained {args.model}: final train error {last.train_error:.4f}, test error {last.test_error:.4f}; "
          f"weights in {Path(args.out) / 'model.pt'}, metrics in {Path(args.out) / 'metrics.csv'}")
    return 0


def cmd_study(args) -> int:
    """Any declared study's subcommand: claim the folder, load on demand, run, write."""
    study = args.study
    cmd = study.command
    t0 = time.time()
    spec = _spec(args)
    if is_text(args) and not study.text:
        on_text = ", ".join(s.name for s in studies() if s.text and s.command is not None)
        raise UsageError(f"resprobe {study.name} does not run on language models yet", f"on --data text:... run "
                         f"resprobe {on_text}, report or eval")
    options = cmd.options(args) if cmd.options else None
    same = cmd.same_settings
    with _output(args.out, args if same else None, study.stem if same else None) as out:
        result = cmd.execute(Invocation(args, spec, out, lambda: _load(args), options))
        return _finish(result, out, t0, args if same else None)


def cmd_report(args) -> int:
    from .report.full import budget_details
    spec = _spec(args)
    text = is_text(args)
    with _output(args.out, args, "report") as out:
        specs, weights, labels = [args.model], [args.weights.split(",") if args.weights else None], [args.label]
        if args.plain:
            specs.append(args.plain)
            weights.append(args.plain_weights.split(",") if args.plain_weights else None)
            labels.append(args.plain_label)
        if text:
            data, subjects = _load_text(args, specs, labels, weights)
        else:
            data = api.load_data(args.data, args.split, args.data_root, args.download, args.limit, args.seed)
            subjects = api.load_subjects(specs, weights, data, labels, args.normalize, _access(args))
        note(f"budget {args.budget}: {budget_details(args.budget, len(data), text)}"
             + (" (--budget full uses every image)" if args.budget != "full" and not text else ""))
        sections = api.full_report(subjects, data, spec, args.budget, out, command=_settings(args))
    failed = sorted({v["study"] for v in sections.values() if v["verdict"] == "failed"})
    if dist.is_main():
        for k, v in sections.items():
            print(f"{k:>20}: {v['verdict']} ({v['seconds']:.1f} s)")
        print(f"report: {Path(args.out) / 'report.html'}")
        if failed:
            print(f"resprobe: {len(failed)} {'study' if len(failed) == 1 else 'studies'} failed ({', '.join(failed)}): "
                  "the report holds the others and each failure's traceback (report.json 'failures')", file=sys.stderr)
    return 1 if failed else 0


def cmd_demo(args) -> int:
    from .report.demo import demo_command
    return demo_command(args)


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
             [common, model_flags(multi=False)])
    q.add_argument("--input-size", type=int_list, help="C,H,W (default: the model's own, else 3,32,32; 3,224,224 "
                                                       "for torchvision)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_info)
    q = _sub(sub, "eval", "error and loss of a model on a data set", [common, model_flags(multi=False), data_flags()])
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_eval)
    q = _sub(sub, "weights", "the published checkpoints resprobe fetches by name (--weights he2016:resnet56)",
             [common])
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_weights)


def _add_train(sub, common) -> None:
    q = _sub(sub, "train", "train a model (He et al. recipe by default) into --out",
             [common, model_flags(multi=False), data_flags(), out_flags()])
    q.add_argument("--epochs", type=positive_int, required=True, help="number of epochs")
    q.add_argument("--lr", type=positive_float, default=0.1, help="peak learning rate")
    q.add_argument("--momentum", type=typed(checks.number, 0, 1, hi_open=True), default=0.9,
                   help="SGD momentum, in [0, 1)")
    q.add_argument("--weight-decay", type=typed(checks.number, 0), default=1e-4, help="weight decay (>= 0)")
    q.add_argument("--schedule", default="step", choices=["step", "cosine", "constant"],
                   help="step: lr/10 at 50%% and 75%% of the epochs (He et al.)")
    q.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="optimizer")
    q.add_argument("--warmup-epochs", type=typed(checks.integer, 0, MAX_INT), default=0, help="linear learning-rate warm-up over these epochs")
    q.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    q.add_argument("--test-data", help="data spec of the test split when it lives elsewhere (default: --data)")
    q.add_argument("--test-limit", type=positive_int, help="evaluate on a seeded subset of the test split")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    q.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    q.set_defaults(func=cmd_train, batch_size=128)


def _add_studies(sub, common) -> None:
    """One subcommand per declared study with a command (:mod:`resprobe.studies`)."""
    for study in studies():
        cmd = study.command
        if cmd is None:
            continue
        required = cmd.inputs == "required"
        q = _sub(sub, study.name, cmd.help, [common, model_flags(required=required), data_flags(required, dtype=required),
                                             out_flags()])
        cmd.add_arguments(q)
        q.set_defaults(func=cmd_study, study=study, batch_size=cmd.batch_size,
                       **({} if required else {"dtype": "float32"}))


def _add_report(sub, common) -> None:
    q = _sub(sub, "report", "every study, one page with a verdict per conjecture",
             [common, model_flags(multi=False), data_flags(), out_flags()])
    g = q.add_argument_group("plain twin")
    g.add_argument("--plain", help="spec of the plain twin, trained with the same recipe (the comparative verdicts "
                                   "need it)")
    g.add_argument("--plain-weights", help="its checkpoint(s), comma separated, seeds paired with --weights")
    g.add_argument("--plain-label", help="display name of the plain twin")
    q.add_argument("--budget", default="fast", choices=list(BUDGETS),
                   help="fast: 500 images for lesions and identity, 64 for amplification and paths, small sweeps "
                        "(minutes on a CPU; on text: 4-32 windows, single deletions); full: every image and the "
                        "papers' sample counts (on text: 16-128 windows, and the pruning rules)")
    q.set_defaults(func=cmd_report)
    q = _sub(sub, "demo", "offline: train a small ResNet and its plain twin on procedural images, then the report",
             [common, out_flags()])
    q.add_argument("--model", default="cifar_resnet14", help="residual network to train")
    q.add_argument("--plain", default="cifar_plain14", help="its plain twin")
    q.add_argument("--epochs", type=positive_int, default=6, help="training epochs of each")
    q.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="resprobe", description="Probe why residual networks work.", formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"resprobe {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    common = run_flags()
    _add_info_eval(sub, common)
    _add_train(sub, common)
    _add_studies(sub, common)
    _add_report(sub, common)
    return p


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
        err = machine_error(e)
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
