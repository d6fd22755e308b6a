"""The CLI: info and eval, their JSON, and clear errors for bad inputs (exit code 2, no traceback)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from resprobe.cli import main
from resprobe.models import build_model

from conftest import RESNET20, RESNET56, TEST_ARCHIVE, need_shared


def plain_cnn(num_classes=10):
    """A model with no residual block, reachable as the spec ``test_cli:plain_cnn``."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))


class Custom:
    """An arbitrary Python object inside a checkpoint: the safe loader refuses it."""


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec,n", [("torchvision:resnet18", 8), ("torchvision:resnet50", 16), ("cifar_resnet56", 27)])
def test_info_counts_blocks(capsys, spec, n):
    pytest.importorskip("torchvision")
    code, out, _ = run(capsys, "info", "--model", spec, "--json", "--input-size", "3,64,64")
    info = json.loads(out)
    assert code == 0 and info["n_blocks"] == n and info["n_units"] == n and len(info["units"]) == n
    assert {u["kind"] for u in info["units"]} == {"residual"}
    code, out, _ = run(capsys, "info", "--model", spec)
    assert f"{n} units in {n} blocks" in out and f"({n} residual)" in out and "layer1.0" in out


def test_info_non_residual_model_is_clear(capsys):
    code, _, err = run(capsys, "info", "--model", "test_cli:plain_cnn", "--trust-code")
    assert code == 2 and "no residual block" in err and "register_block" in err and "Traceback" not in err


def test_eval_json_on_synthetic(capsys, tmp_path):
    p = tmp_path / "w.pt"
    torch.save(build_model("cifar_resnet8", num_classes=4).state_dict(), p)
    code, out, _ = run(capsys, "eval", "--model", "cifar_resnet8", "--weights", str(p), "--data", "synthetic",
                       "--limit", "64", "--json", "--normalize", "none")
    res = json.loads(out)
    assert code == 0 and res["n_images"] == 64 and 0 <= res["n_wrong"] <= 64
    assert res["error"] == res["n_wrong"] / 64 and len(res["weights_sha256"]) == 64


def test_eval_bad_inputs(capsys, tmp_path):
    w20 = tmp_path / "r20.pt"
    torch.save(build_model("cifar_resnet20").state_dict(), w20)
    code, _, err = run(capsys, "eval", "--model", "cifar_resnet56", "--weights", str(w20), "--data", "synthetic(classes=4)")
    assert code == 2 and "missing keys" in err
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 50)
    code, _, err = run(capsys, "eval", "--model", "cifar_resnet20", "--data", f"imagefolder:{bad}")
    assert code == 2 and "bad.tar.gz" in err
    code, _, err = run(capsys, "eval", "--model", "cifar_resnet20", "--data", "cifar10", "--data-root",
                       str(tmp_path / "nothing"))
    assert code == 2 and "--download" in err

    pk = tmp_path / "pickle.pt"
    torch.save({"state_dict": build_model("cifar_resnet20").state_dict(), "obj": Custom()}, pk)
    code, _, err = run(capsys, "info", "--model", "cifar_resnet20", "--weights", str(pk))
    assert code == 2 and "--trust-checkpoint" in err
    with pytest.warns(UserWarning):
        code, out, _ = run(capsys, "info", "--model", "cifar_resnet20", "--weights", str(pk), "--trust-checkpoint")
    assert code == 0
    code, _, err = run(capsys, "info", "--model", "cifar_resnet21")
    assert code == 2 and "depth must be 6n+2" in err


def test_console_script_installed():
    r = subprocess.run([sys.executable, "-m", "resprobe.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "info" in r.stdout and "eval" in r.stdout and "train" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("weights,spec,n_wrong", [(RESNET56, "cifar_resnet56", 1680), (RESNET20, "cifar_resnet20", 1897)])
def test_eval_shared_checkpoints_full_test_set(capsys, weights, spec, n_wrong):
    """The figures in ../shared/models/README.md: 16.80% and 18.97% on the JPEG test set."""
    need_shared(weights, TEST_ARCHIVE)
    code, out, _ = run(capsys, "eval", "--model", spec, "--weights", str(weights), "--data",
                       f"imagefolder:{TEST_ARCHIVE}", "--split", "test", "--normalize", "imagenet", "--json")
    res = json.loads(out)
    assert code == 0 and res["n_images"] == 10000 and res["n_wrong"] == n_wrong
