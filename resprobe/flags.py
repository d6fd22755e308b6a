"""Argument types for the command line, each one a :mod:`resprobe.checks` validator or a parser of lists and
ranges: a bad value is one argparse error naming its flag. The studies' declarations use them for their
own flags (:mod:`resprobe.studies`), the command line for the shared ones."""
from __future__ import annotations

import argparse
import math

from . import checks
from .errors import UsageError

__all__ = ["is_text", "weights_lists", "typed", "MAX_INT", "positive_int", "seed_arg", "n_boot_arg", "positive_float", "fraction", "float_list",
           "int_list", "str_list", "RangeSpec", "int_or_all", "run_flags", "data_flags", "model_flags",
           "out_flags"]


def typed(check, *a, **kw):
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


seed_arg = typed(lambda name, t: checks.seed(t, name))
n_boot_arg = typed(lambda name, t: checks.n_boot(t, name))


def int_or_all(text: str):
    """A positive integer, or 'all' (None)."""
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


# --- the shared flags: parent parsers of the subcommands ----------------------------------------------------

def run_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of every random choice (subsets, directions, bootstrap)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    return p


def data_flags(required: bool = True, dtype: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="cifar10 | imagefolder:PATH | fashion-mnist | synthetic(...) | "
                                                     "text:pydoc | text:PATH (language models)")
    g.add_argument("--seq-len", type=positive_int, help="text: tokens per window (default 128)")
    g.add_argument("--data-root", help="folder holding the data set (cifar10, fashion-mnist)")
    g.add_argument("--download", action="store_true", help="allow downloading the data set (checksum verified)")
    g.add_argument("--split", default="test", help="split to use (folders without split folders: all images)")
    g.add_argument("--limit", type=positive_int, help="a seeded random subset of N images or text windows (not the first N)")
    g.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (results do not depend on it)")
    if dtype:
        g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                       help="bfloat16: mixed precision for sweeps (opt-in; predictions may change)")
    g.add_argument("--n-boot", type=n_boot_arg, default=1000, help="bootstrap resamples for CIs (100-100,000)")
    return p


def model_flags(multi: bool = True, required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("networks")
    g.add_argument("--model", action="append" if multi else None, required=required,
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
    g.add_argument("--device-map", help="language models from weights: accelerate's placement across devices (auto, "
                                        "or a JSON file {module: device} whose devices may include cpu and disk)")
    g.add_argument("--offload-folder", help="with --device-map: the folder for weights offloaded to disk")
    g.add_argument("--allow-nonfinite", action="store_true",
                   help="probe networks with NaN/inf weights or activations, marking the affected rows")
    return p


def out_flags(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--out", required=required, help="output folder (checked and locked before the work starts)")
    return p


def weights_lists(args) -> list:
    ws = args.weights or []
    if ws and len(ws) != len(args.model):
        raise UsageError(f"give one --weights per --model ({len(args.model)} models, {len(ws)} weights)",
                         "several seeds of one model go in one --weights, comma separated")
    return [w.split(",") for w in ws] if ws else [None] * len(args.model)


def is_text(args) -> bool:
    """Whether ``--data`` is text (``--seq-len`` is refused for anything else)."""
    text = (getattr(args, "data", None) or "").startswith("text:")
    if not text and getattr(args, "seq_len", None) is not None:
        raise UsageError("--seq-len applies to text data (--data text:...) only", "drop --seq-len for images")
    return text
