"""What every figure script shares: arguments, the default networks, data, and the summary it writes.

Default networks: the shared He et al. CIFAR ResNets in ``../shared/models`` and the plain twins this
project trained (``zoo/``). Any other network of the family: ``--model SPEC --weights PATH`` (repeat),
e.g. ``--model cifar_resnet110 --weights my110.th``. ``--fast`` (what CI runs) uses ResNet-20 and the
plain-20 twin on a small seeded subset of the test set, with small sample counts.
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
NETS = {  # label: (spec, weights)
    "resnet20": ("cifar_resnet20", SHARED / "models" / "resnet20-12fca82f.th"),
    "resnet56": ("cifar_resnet56", SHARED / "models" / "resnet56-4bfd9763.th"),
    "plain20": ("cifar_plain20", ROOT / "zoo" / "cifar_plain20" / "model.pt"),
    "plain56": ("cifar_plain56", ROOT / "zoo" / "cifar_plain56" / "model.pt"),
}
TEST_DATA = f"imagefolder:{SHARED / 'data' / 'cifar10-jpeg-test.tar.gz'}"


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help="small and quick (what CI runs)")
    p.add_argument("--model", action="append", help="model spec (repeat, with --weights): replaces the defaults")
    p.add_argument("--weights", action="append", help="checkpoint for each --model")
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


def networks(args, full: list[str], fast: list[str]):
    """``[(label, model, provenance)]``: --model/--weights when given, else the default labels."""
    from resprobe.api import load_model
    if args.model:
        weights = args.weights or [None] * len(args.model)
        labels = args.label or [Path(w).stem if w else s for s, w in zip(args.model, weights)]
        if not (len(weights) == len(labels) == len(args.model)):
            raise SystemExit("give one --weights (and --label, if any) per --model")
        items = list(zip(labels, args.model, weights))
    else:
        items = [(lab, *NETS[lab]) for lab in (fast if args.fast else full)]
        missing = [str(w) for _, _, w in items if not Path(w).is_file()]
        if missing:
            raise SystemExit("missing default networks (../shared absent?): " + ", ".join(missing)
                             + "; pass --model SPEC --weights PATH")
    out = []
    for label, spec, w in items:
        model, prov = load_model(spec, str(w) if w else None)
        out.append((label, model, prov))
    return out


def data(args, fast_limit: int):
    from resprobe.api import load_data
    limit = args.limit if args.limit else (fast_limit if args.fast else None)
    try:
        return load_data(args.data, "test", limit=limit)
    except Exception as e:  # noqa: BLE001 - the reason, not a traceback
        raise SystemExit(f"cannot load {args.data}: {e}")


def device(args):
    from resprobe.engine import resolve_device
    return resolve_device(args.device)


def finish(out: Path, name: str, args, t0: float, headline: list[str], numbers: dict) -> None:
    """Write ``summary.json`` (the headline numbers, the command, the time) and print the headline."""
    from resprobe.report.tables import write_json
    out = Path(out)
    summary = dict(experiment=name, fast=bool(args.fast), command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                   seconds=round(time.time() - t0, 1), headline=headline, numbers=numbers)
    write_json(summary, out / "summary.json")
    for line in headline:
        print(line)
    print(f"{name}: {time.time() - t0:.0f} s; results in {out}")
