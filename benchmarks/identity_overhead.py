"""Cost of the identity study relative to plain inference, end to end: ``resprobe identity`` against
``resprobe eval`` on the same checkpoint and images, whole processes (start-up, imports, data loading and
writing the results count), timed in one run.

    python benchmarks/identity_overhead.py                    # resnet56, the 10k JPEG test set, 5 pairs
    python benchmarks/identity_overhead.py --pairs 3 --limit 2000

Each identity process is timed beside its own eval process (before or after it, alternately), and each pair
gives a ratio (this machine's speed drifts by several per cent between minutes). Printed: every pair, the median
and range of the ratios, and the target's verdict from the 95% t interval of their mean (met when it lies at or
below 1.3, not met above it, inconclusive across).

Target (issue 28): the default identity study costs <= 1.3x ``resprobe eval``, on any x86 CPU, with torch
operations only (no compiler at run time).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats

SHARED = Path(__file__).resolve().parents[2] / "shared"
TARGET = 1.3


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--pairs", type=int, default=5)
    args = ap.parse_args()
    exe = [sys.executable, "-m", "resprobe"]
    common = ["--model", args.model, "--weights", args.weights, "--data", args.data, "--normalize", "imagenet",
              "--quiet"] + (["--limit", str(args.limit)] if args.limit else [])
    with tempfile.TemporaryDirectory() as tmp:
        # a warm-up of each (the decoded-image cache is built once; both then read it)
        _timed(exe + ["eval"] + common)
        ratios = []
        for k in range(args.pairs):
            out = ["--out", str(Path(tmp) / f"identity{k}")]
            if k % 2 == 0:
                ev = _timed(exe + ["eval"] + common)
                ident = _timed(exe + ["identity"] + common + out)
            else:
                ident = _timed(exe + ["identity"] + common + out)
                ev = _timed(exe + ["eval"] + common)
            ratios.append(ident / ev)
            print(f"pair {k + 1}: resprobe identity {ident:.2f} s, resprobe eval {ev:.2f} s, ratio {ident / ev:.3f}")
    r = np.asarray(ratios)
    m = float(r.mean())
    half = float(stats.t.ppf(0.975, len(r) - 1) * r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else float("nan")
    verdict = ("met" if m + half <= TARGET else "not met" if m - half > TARGET else "inconclusive")
    print(f"identity / eval, whole processes: median {np.median(r):.3f}x (range {r.min():.3f}-{r.max():.3f}), "
          f"mean {m:.3f}x [{m - half:.3f}, {m + half:.3f}] over {len(r)} pairs; target <= {TARGET}x: {verdict}")


if __name__ == "__main__":
    main()
