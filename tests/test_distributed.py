"""torchrun with 2 CPU processes (gloo) gives the single-process result: the same error counts and CSV rows
(floating sums to 1e-9 relative), for every probe that shards images; and a failing rank stops the run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow

TORCHRUN = shutil.which("torchrun")
COMMON = ["--data", "synthetic(n=150,size=16)", "--normalize", "none", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from resprobe.models import build_model
    d = tmp_path_factory.mktemp("w")
    out = []
    for spec in ("cifar_resnet8", "cifar_plain8"):
        torch.manual_seed(0)
        torch.save(build_model(spec, num_classes=4).state_dict(), d / f"{spec}.pt")
        out += ["--model", spec, "--weights", str(d / f"{spec}.pt")]
    return out


def _both(tmp_path, args):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "resprobe", *args, "--out", str(one)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "resprobe", *args, "--out",
                        str(two)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return one, two


def _same_table(a, b, exact):
    x, y = pd.read_csv(a), pd.read_csv(b)
    assert list(x.columns) == list(y.columns) and len(x) == len(y)
    for c in x.columns:
        if c in exact or not pd.api.types.is_numeric_dtype(x[c]):
            pd.testing.assert_series_equal(x[c], y[c], check_dtype=False)
        else:
            assert np.allclose(x[c].astype(float), y[c].astype(float), rtol=1e-9, atol=1e-12, equal_nan=True), c


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("probe,extra,table,exact", [
    ("lesion", ["--mode", "random-k", "--k", "1,2", "--samples", "3"], "lesion.csv",
     ("n_wrong", "n_broken", "n_fixed", "n_images", "error", "ci_low", "ci_high", "p_mcnemar")),
    ("identity", ["--cka-minibatch", "8"], "identity.csv", ("n_images",)),
    ("paths", ["--samples", "2"], "paths.csv", ("n_paths", "samples")),
    ("amplify", ["--eps", "1e-3", "--power-iters", "2"], "amplify.csv", ("n_images",)),
    ("gradcorr", ["--lines", "4", "--points", "32"], "gradcorr.csv", ()),
])
def test_distributed_equals_single_process(tmp_path, weights, probe, extra, table, exact):
    nets = weights[:4] if probe in ("lesion", "paths") else weights  # random deletions and paths: the ResNet
    one, two = _both(tmp_path, [probe, *nets, *COMMON, *extra])
    _same_table(one / table, two / table, exact)
    v1 = json.loads((one / table.replace(".csv", ".json")).read_text())["verdicts"]
    v2 = json.loads((two / table.replace(".csv", ".json")).read_text())["verdicts"]
    assert [v["verdict"] for v in v1] == [v["verdict"] for v in v2]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_distributed_lesion_resumes_with_another_number_of_ranks(tmp_path, weights):
    args = ["lesion", *weights[:4], *COMMON, "--mode", "single"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "o"
    subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "resprobe", *args, "--out",
                    str(out)], check=True, capture_output=True, env=env, timeout=600)
    first = (out / "lesion.csv").read_text()
    loud = [a for a in args if a != "--quiet"]
    r = subprocess.run([sys.executable, "-m", "resprobe", *loud, "--out", str(out)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0 and "resumed — 4 configurations reused" in r.stderr, r.stderr[-2000:]
    assert (out / "lesion.csv").read_text() == first


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_a_failing_rank_stops_the_run(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(
        "import os, sys\n"
        "sys.path.insert(0, %r)\n"
        "from resprobe import distributed as dist\n"
        "dist.init('cpu')\n"
        "if dist.rank() == 1:\n"
        "    raise RuntimeError('rank 1 failed on purpose')\n"
        "dist.reduce_sum(1.0)  # rank 0 would wait here forever\n" % str(os.getcwd()))
    env = dict(os.environ, RESPROBE_DIST_TIMEOUT="60")
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc-per-node", "2", str(script)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode != 0 and "rank 1 failed on purpose" in r.stderr


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("mode", [["--mode", "skip", "--k", "1:3"], ["--mode", "prune-by-similarity", "--k", "1,2",
                                                                      "--samples", "3"]])
def test_text_windows_shard_like_images(tmp_path, mode):
    """Language models: windows are sharded by batch like images; every row (losses, CIs over documents, paired
    tests) equals the single process's."""
    spec = ("hf-config:llama(vocab_size=256, hidden_size=32, intermediate_size=48, num_hidden_layers=5, "
            "num_attention_heads=4, num_key_value_heads=2)")
    args = ["lesion", "--model", spec, "--random-init", "--data", "text:pydoc", "--seq-len", "16", "--limit", "22",
            "--batch-size", "4", "--quiet", *mode]
    one, two = _both(tmp_path, args)
    _same_table(one / "lesion.csv", two / "lesion.csv", ("n_windows", "n_tokens", "n_documents", "deleted"))
    if "prune-by-similarity" in mode:
        _same_table(one / "lesion.correlations.csv", two / "lesion.correlations.csv", ())


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
@pytest.mark.parametrize("probe,extra", [("lesion", []), ("identity", []), ("amplify", ["--power-iters", "3"]),
                                         ("paths", ["--samples", "2"]), ("gradcorr", ["--lines", "2", "--points", "16"])])
def test_every_lm_study_shards_like_images(tmp_path, probe, extra):
    """The LM studies with their verdicts under torchrun (2 gloo ranks, 3 batches: one rank gets one): the table
    and the verdicts equal the single process's."""
    args = [probe, "--model", "hf-config:resprobe_twin(hidden_size=32, num_hidden_layers=2)", "--random-init",
            "--data", "text:pydoc@test", "--seq-len", "16", "--limit", "9", "--batch-size", "4", "--quiet", *extra]
    one, two = _both(tmp_path, args)
    _same_table(one / f"{probe}.csv", two / f"{probe}.csv", ())
    va, vb = (json.loads((d / f"{probe}.json").read_text())["verdicts"] for d in (one, two))
    assert [v["verdict"] for v in va] == [v["verdict"] for v in vb] and va and [v["reason"] for v in va] == \
        [v["reason"] for v in vb]
