"""The batch loop's heap policy against glibc's defaults with the freed heap handed back after every batch (the
policy before issue 16's change), timed in one run: each way in its own fresh process (the glibc settings are
per process), plain inference and the identity study, best of N, with the page faults each run took.

    python benchmarks/heap.py                 # resnet56, the 10k JPEG test set, best of 2
    python benchmarks/heap.py --limit 2000    # quicker

``RESPROBE_HEAP=0`` turns the policy off (then every batch ends with ``malloc_trim``, as before).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

CHILD = r"""
import json, resource, sys, time
from resprobe.engine import RunSpec, evaluate
from resprobe.loading import load_data, load_model
from resprobe.probes import identity
from resprobe.study import Subject
a = json.loads(sys.argv[1])
data = load_data(a["data"], "test", limit=a["limit"])
model, _ = load_model(a["model"], a["weights"])
spec = RunSpec(batch_size=a["batch_size"], progress=False, n_boot=100)
sub = Subject("m", model, "imagenet")
runs = {"inference": lambda: evaluate(model, data, spec, "imagenet"), "identity": lambda: identity.profile(sub, data, spec)}
best = {k: [float("inf"), 0] for k in runs}
for _ in range(a["repeats"]):
    for k, fn in runs.items():
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        if t < best[k][0]:
            best[k] = [t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0]
print(json.dumps(dict(best=best, n=len(data))))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(SHARED / "models/resnet56-4bfd9763.th"))
    ap.add_argument("--data", default=f"imagefolder:{SHARED / 'data/cifar10-jpeg-test.tar.gz'}")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    arg = json.dumps(dict(model=args.model, weights=args.weights, data=args.data, limit=args.limit,
                          batch_size=args.batch_size, repeats=args.repeats))
    got = {}
    for way, env in (("trim after every batch (before)", "0"), ("heap kept between batches (now)", "1")):
        out = subprocess.run([sys.executable, "-c", CHILD, arg], cwd=ROOT, capture_output=True, text=True,
                             env=dict(os.environ, RESPROBE_HEAP=env), check=True)
        got[way] = json.loads(out.stdout.strip().splitlines()[-1])
    n = next(iter(got.values()))["n"]
    print(f"{args.model}, {n} images, batch {args.batch_size}, best of {args.repeats}, each way in a fresh process")
    for way, r in got.items():
        for k, (t, faults) in r["best"].items():
            print(f"{way:34s} {k:10s} {t:7.2f} s  {faults:9,d} page faults")
    (before, now) = got.values()
    for k in ("inference", "identity"):
        print(f"{k}: {before['best'][k][0] / now['best'][k][0]:.2f}x faster now")


if __name__ == "__main__":
    main()
