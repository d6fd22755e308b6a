"""Peak resident memory of every probe over the 10,000-image test set, and of a lesion sweep over the
50,000-image training set, each command in its own process (``os.wait4`` reads that process's peak RSS).

    python benchmarks/memory.py                  # ResNet-56 (shared) on the JPEG test set; ResNet-20 on the train set
    python benchmarks/memory.py --quick          # 2,000 images, to see the shape of the table
    python benchmarks/memory.py --only paths amplify   # the commands whose names start with these words

    python benchmarks/memory.py --lm             # every LM probe on SmolLM2-135M, 64 windows of 256 tokens

Target (issue 13): every peak below 2 GB, whatever the number of images — probes keep per-image scalars,
never activations of the whole data set. Sample counts are reduced where they only multiply time (paths:
one routing per length; amplification: one ε, one power iteration), not memory per image.

Target (issue 30, ``--lm``): every LM probe on SmolLM2-135M over 64 windows of 256 tokens below 4 GB. What
only multiplies time is reduced: the lesion sweep runs one single deletion (memory holds one configuration's
logits at a time, however many configurations a sweep has), paths three path lengths with one routing each,
amplification one ε and one power iteration, shattering two lines of 16 points (the minimum).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def run(argv: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit status) of one command."""
    t0 = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    return usage.ru_maxrss / 1024, time.time() - t0, os.waitstatus_to_exitcode(status)


def table(cases: list, only, target_mb: int) -> None:
    """Run each ``(name, argv)`` (those whose names start with ``only``, if given) and print its peak and time."""
    print(f"{'command':50s} {'peak RSS':>10s} {'time':>8s}")
    worst = 0.0
    for name, argv in cases:
        if only and not name.startswith(tuple(only)):
            continue
        mb, s, code = run(argv)
        worst = max(worst, mb)
        print(f"{name:50s} {mb:8.0f} MB {s:7.0f} s" + ("" if code == 0 else f"  (exit {code})"), flush=True)
    print(f"largest peak: {worst:.0f} MB (target < {target_mb} MB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", default=None, help="run only the commands whose names start with these")
    ap.add_argument("--lm", action="store_true", help="the language-model probes on SmolLM2-135M instead")
    args = ap.parse_args()
    if args.lm:
        return main_lm(args)
    test = f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}"
    train = f"imagefolder:{SHARED / 'data/cifar10-jpeg-train.tar.gz'}"
    r56 = ["--model", "cifar_resnet56", "--weights", str(SHARED / "models/resnet56-4bfd9763.th"),
           "--normalize", "imagenet", "--quiet"]
    r20 = ["--model", "cifar_resnet20", "--weights", str(SHARED / "models/resnet20-12fca82f.th"),
           "--normalize", "imagenet", "--quiet"]
    lim = ["--limit", "2000"] if args.quick else []
    rp = [sys.executable, "-m", "resprobe"]
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("eval, 10k test images", rp + ["eval", *r56, "--data", test, *lim, "--json"]),
            ("lesion single, 10k", rp + ["lesion", *r56, "--data", test, *lim, "--out", f"{tmp}/l"]),
            ("identity (default metrics), 10k", rp + ["identity", *r56, "--data", test, *lim, "--out", f"{tmp}/i"]),
            ("paths (1 routing per length), 10k", rp + ["paths", *r56, "--data", test, *lim, "--samples", "1",
                                                        "--out", f"{tmp}/p"]),
            ("amplify (one ε, 1 power iteration), 10k", rp + ["amplify", *r56, "--data", test, *lim, "--eps", "1e-3",
                                                              "--power-iters", "1", "--out", f"{tmp}/a"]),
            ("gradcorr, 16 lines", rp + ["gradcorr", *r56, "--data", test, *lim, "--lines", "16", "--out", f"{tmp}/g"]),
            ("prune metrics, 10k", rp + ["prune", *r56, "--data", test, *lim, "--out", f"{tmp}/pr"]),
            ("lesion single, ResNet-20, 50k training images", rp + ["lesion", *r20, "--data", train, "--split", "train",
                                                                    *(["--limit", "5000"] if args.quick else []),
                                                                    "--out", f"{tmp}/lt"]),
        ]
        table(cases, args.only, 2048)


def main_lm(args):
    rp = [sys.executable, "-m", "resprobe"]
    lm = ["--model", "smollm2-135m", "--data", "text:pydoc", "--seq-len", "256", "--limit", "64", "--quiet"]
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("eval", rp + ["eval", *lm, "--json"]),
            ("lesion (one single deletion)", rp + ["lesion", *lm, "--mode", "set", "--units", "model.layers.15.mlp",
                                                   "--out", f"{tmp}/l"]),
            ("identity and logit lens", rp + ["identity", *lm, "--out", f"{tmp}/i"]),
            ("amplify (one ε, 1 power iteration)", rp + ["amplify", *lm, "--eps", "1e-3", "--power-iters", "1",
                                                         "--out", f"{tmp}/a"]),
            ("paths (k = 0, 1, 2; 1 routing each)", rp + ["paths", *lm, "--k", "0:2", "--samples", "1",
                                                          "--out", f"{tmp}/p"]),
            ("gradcorr (2 lines of 16 points)", rp + ["gradcorr", *lm, "--lines", "2", "--points", "16",
                                                      "--line", "between", "--out", f"{tmp}/g"]),
        ]
        print("SmolLM2-135M, 64 windows of 256 tokens")
        table(cases, args.only, 4096)


if __name__ == "__main__":
    main()
