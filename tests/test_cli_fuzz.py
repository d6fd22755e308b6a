"""Property test of the whole command line (slow suite): every subcommand's flags get random values of their
declared types (integers from the edges of their range and beyond, floats including NaN and infinities,
choices and words that are not among them, ranges with odd steps). Whatever comes, the command ends with
status 0 and strict JSON whose intervals are finite and ordered, or with status 2 and one line
on stderr, never a traceback.

The flags are read from the parser itself, so a flag added later is fuzzed too. Flags that only say how
much work to do (epochs, samples, points, ...) draw from small numbers (their edges and invalid values
included) so that one example stays a few seconds; paths and files have their own tables."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resprobe import cli  # noqa: E402

pytestmark = pytest.mark.slow

BASE = {  # a valid, small command per subcommand; the fuzzed flags are added after it (argparse: last wins)
    "info": ["--model", "cifar_resnet8"],
    "eval": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)"],
    "train": ["--model", "cifar_resnet8", "--data", "synthetic(n=16)", "--epochs", "1", "--out", "{out}"],
    "lesion": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--out", "{out}"],
    "identity": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--out", "{out}"],
    "paths": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--samples", "2",
              "--out", "{out}"],
    "amplify": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--power-iters", "2",
                "--out", "{out}"],
    "prune": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--out", "{out}"],
    "gradcorr": ["--model", "cifar_resnet8", "--random-init", "--data", "synthetic(n=16)", "--points", "16",
                 "--out", "{out}"],
}
SKIP = {"--out", "--data-root", "--weights", "--plain-weights", "--test-data", "--label", "--plain-label", "--help",
        "--version", "--debug", "--download", "--device", "--resume", "--overwrite", "--budget", "--plain",
        "--trust-checkpoint", "--trust-code"}
WORK = {"--epochs", "--samples", "--points", "--lines", "--power-iters", "--seeds", "--width", "--depths",
        "--limit", "--test-limit", "--n-boot", "--cka-images", "--warmup-epochs"}
WORDS = ["", "abc", "nan", "inf", "-inf", "-1", "0", "1.5", "1e400", "0x10", "None", "1,2", ":", "n", "ü"]


def _ints(work: bool):
    small = st.integers(-2, 6) if work else st.integers(-3, 40)
    edges = st.sampled_from([2 ** 31, 2 ** 63, 2 ** 64, 10 ** 30]) if not work else st.sampled_from([-(2 ** 63)])
    return st.one_of(small.map(str), edges.map(str), st.sampled_from(WORDS))


def _floats():
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(WORDS),
                     st.floats(-2, 2).map(lambda v: f"{v:g}"))


def _value(action: argparse.Action, work: bool):
    t = action.type
    name = getattr(t, "__name__", type(t).__name__ if t else "str")
    if action.choices:
        return st.one_of(st.sampled_from([str(c) for c in action.choices]), st.sampled_from(["bogus", ""]))
    if t is cli.RangeSpec:
        part = st.one_of(st.integers(-2, 12).map(str), st.just("n"), st.just(""))
        return st.one_of(st.lists(part, min_size=1, max_size=4).map(":".join),
                         st.lists(part, min_size=1, max_size=4).map(",".join), st.sampled_from(WORDS))
    if name in ("int_list", "float_list"):
        one = _ints(work) if name == "int_list" else _floats()
        return st.lists(one, min_size=1, max_size=3).map(",".join)
    if name in ("positive_float", "fraction") or "number" in name or t is float:
        return _floats()
    if t is None or name == "str_list":
        return st.sampled_from(["layer1.0", "layer2.0,layer3.0", "layer9.9", "", ",", "stem", "unit", "n"])
    return _ints(work)


def _flags(sub: str):
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    out = []
    for a in subs[sub]._actions:
        flag = next((o for o in a.option_strings if o.startswith("--")), None)
        if flag is None or flag in SKIP:
            continue
        if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out.append((flag, None))
        else:
            out.append((flag, _value(a, flag in WORK)))
    return out


@st.composite
def commands(draw):
    sub = draw(st.sampled_from(sorted(BASE)))
    flags = _flags(sub)
    picked = draw(st.lists(st.sampled_from(flags), min_size=1, max_size=3, unique_by=lambda f: f[0]))
    argv = [sub, *BASE[sub], "--quiet"]
    if sub in ("lesion", "identity", "paths", "amplify", "prune", "gradcorr"):
        argv += ["--n-boot", "100"]
    for flag, strat in picked:
        argv += [flag] if strat is None else [f"{flag}={draw(strat)}"]
    return argv


def _strict(path: Path):
    def bad(c):
        raise ValueError(f"{path.name} holds {c}")
    return json.loads(path.read_text(), parse_constant=bad)


def _check_verdicts(obj, where: str) -> None:
    if isinstance(obj, dict):
        if {"statistic", "ci_low", "ci_high"} <= set(obj) and all(
                isinstance(obj[k], (int, float)) for k in ("statistic", "ci_low", "ci_high")):
            lo, s, hi = obj["ci_low"], obj["statistic"], obj["ci_high"]
            assert all(map(math.isfinite, (lo, s, hi))), (where, obj)
            assert lo <= hi, (where, obj)
        for v in obj.values():
            _check_verdicts(v, where)
    elif isinstance(obj, list):
        for v in obj:
            _check_verdicts(v, where)


@settings(max_examples=int(__import__("os").environ.get("RESPROBE_FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(commands())
def test_every_flag_value_gives_a_right_answer_or_one_line(argv):
    out = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        argv = [a.replace("{out}", str(out / "o")) for a in argv]
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
        text = err.getvalue()
        assert "Traceback" not in text, (argv, text)
        assert code in (0, 2), (argv, code, text[-2000:])
        if code == 2:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            assert len(lines) == 1 and lines[0].startswith("resprobe: error:"), (argv, text)
            return
        if "--json" in argv:
            _check_verdicts(json.loads(std.getvalue(), parse_constant=lambda c: (_ for _ in ()).throw(
                ValueError(c))), " ".join(argv))
        for p in (out / "o").glob("*.json") if (out / "o").is_dir() else ():
            _check_verdicts(_strict(p), f"{' '.join(argv)}: {p.name}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
