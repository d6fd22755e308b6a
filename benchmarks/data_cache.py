"""Decoded-image cache: time a cold load of an image archive and a cached reload, in one run.

    python benchmarks/data_cache.py [ARCHIVE [SPLIT]]   (default ../shared/data/cifar10-jpeg-test.tar.gz test)

Target (issue 2): the cached load is at least 5x faster than the cold one.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    archive = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/data/cifar10-jpeg-test.tar.gz"
    split = sys.argv[2] if len(sys.argv) > 2 else "test"
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RESPROBE_CACHE"] = cache
        from resprobe.io.data import load_dataset
        t0 = time.perf_counter()
        cold = load_dataset(f"imagefolder:{archive}", split)
        t1 = time.perf_counter()
        warm = load_dataset(f"imagefolder:{archive}", split)
        t2 = time.perf_counter()
    assert not cold.source["cached"] and warm.source["cached"]
    print(f"{archive.name}: {len(cold)} images")
    print(f"cold load (read archive + decode): {t1 - t0:.3f} s")
    print(f"cached load:                       {t2 - t1:.3f} s")
    print(f"speed-up: {(t1 - t0) / (t2 - t1):.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
