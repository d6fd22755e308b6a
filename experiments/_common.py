"""What every figure script shares: arguments, the default networks, data, and the summary it writes.

Default networks (``NETS``): the shared He et al. CIFAR ResNets in ``../shared/models`` (trained by
others: analysed alone, never contrasted with a network trained here) and the project's zoo, whose
ResNet-20 and plain-20 were trained with one recipe, three seeds each (the comparative verdicts use
them). Networks are loaded with :func:`resprobe.loading.load_subjects`, the CLI's rule for labels,
normalization, seeds and recipes. Any other network: ``--model SPEC --weights PATH[,PATH...]`` (repeat).
``--fast`` (what CI runs) uses seed 0 of the zoo's ResNet-20 and plain-20 on a small seeded subset.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("RESPROBE_SHARED", ROOT.parent / "shared"))
ZOO = ROOT / "zoo"
NETS = {  # name: (spec, weights of each seed)
    "resnet20-shared": ("cifar_resnet20", [SHARED / "models" / "resnet20-12fca82f.th"]),
    "resnet56-shared": ("cifar_resnet56", [SHARED / "models" / "resnet56-4bfd9763.th"]),
    "resnet20": ("cifar_resnet20", [ZOO / d / "model.pt" for d in ("cifar_resnet20", "cifar_resnet20_seed1",
                                                                   "cifar_resnet20_seed2")]),
    "plain20": ("cifar_plain20", [ZOO / d / "model.pt" for d in ("cifar_plain20", "cifar_plain20_seed1",
                                                                 "cifar_plain20_seed2")]),
    "plain56": ("cifar_plain56", [ZOO / "cifar_plain56" / "model.pt"]),
}
TEST_DATA = f"imagefolder:{SHARED / 'data' / 'cifar10-jpeg-test.tar.gz'}"


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="small and quick (what CI runs)")
    p.add_argument("--model", action="append", help="model spec (repeat, with --weights): replaces the defaults")
    p.add_argument("--weights", action="append", help="checkpoint(s) of each --model, comma separated for seeds")
    p.add_argument("--label", action="append", help="display name for each --model")
    p.add_argument("--data", default=TEST_DATA, help="data spec (default: the JPEG CIFAR-10 test set in ../shared)")
    p.add_argument("--normalize", default="imagenet")
    p.add_argument("--limit", type=int, help="seeded subset of the data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help=f"output folder (default results/{name}, or results/{name}-fast with --fast)")
    p.add_argument("--no-progress", action="store_true")
    return p


def out_dir(args, name: str) -> Path:
    return Path(args.out) if args.out else ROOT / "results" / (name + ("-fast" if args.fast else ""))


def spec(args, **over):
    from resprobe.engine import RunSpec, resolve_device
    return RunSpec(device=str(resolve_device(args.device)), seed=args.seed, progress=not args.no_progress, **over)


def networks(args, data, full: list[str], fast: list[str]):
    """The subjects: --model/--weights when given, else the named defaults (``--fast``: seed 0 only)."""
    from resprobe.loading import load_subjects
    if args.model:
        weights = [w.split(",") for w in args.weights] if args.weights else [None] * len(args.model)
        if len(weights) != len(args.model):
            raise SystemExit("give one --weights per --model")
        return load_subjects(args.model, weights, data, args.label, args.normalize)
    names = fast if args.fast else full
    items = [(n, NETS[n][0], NETS[n][1][:1] if args.fast else NETS[n][1]) for n in names]
    missing = [str(w) for _, _, ws in items for w in ws if not Path(w).is_file()]
    if missing:
        raise SystemExit("missing default networks (../shared or zoo/ absent?): " + ", ".join(missing)
                         + "; pass --model SPEC --weights PATH")
    return load_subjects([s for _, s, _ in items], [[str(w) for w in ws] for _, _, ws in items], data,
                         [n for n, _, _ in items], args.normalize)


def data(args, fast_limit: int, full_limit=None):
    from resprobe.loading import load_data
    limit = args.limit if args.limit else (fast_limit if args.fast else full_limit)
    try:
        return load_data(args.data, "test", limit=limit)
    except Exception as e:  # noqa: BLE001 - the reason, not a traceback
        raise SystemExit(f"cannot load {args.data}: {e}")


def finish(out: Path, name: str, args, t0: float, result, numbers: dict | None = None) -> None:
    """Save the study, write ``summary.json`` (findings, verdicts, the command, the time) and print them."""
    from resprobe.report import save
    from resprobe.io.tables import write_json
    out = Path(out)
    save(result, out)
    headline = [f.replace("**", "") for f in result.findings] + [
        f"verdict: {v.verdict} — {v.conjecture}: {v.statistic_name} = {v.statistic} [{v.ci_low}, {v.ci_high}] "
        f"({v.scope})" for v in result.verdicts]
    summary = dict(experiment=name, fast=bool(args.fast), command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                   seconds=round(time.time() - t0, 1), headline=headline, numbers=numbers or result.summary,
                   verdicts=[v.as_dict() for v in result.verdicts])
    write_json(summary, out / "summary.json")
    for line in headline:
        print(line)
    print(f"{name}: {time.time() - t0:.0f} s; results in {out}")
