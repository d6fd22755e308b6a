"""Checkpoint loading: containers, prefixes, legacy format, safe loading, clear mismatch errors."""
from __future__ import annotations

import pytest
import torch

from resprobe.io.checkpoint import CheckpointError, load_weights, read_state_dict
from resprobe.models import build_model

from conftest import RESNET20, RESNET56, need_shared


class NotATensor:  # a custom class the safe loader refuses
    def __init__(self):
        self.x = 1


def _prefixed(sd):
    return {"module." + k: v for k, v in sd.items()}


@pytest.mark.parametrize("wrap", ["bare", "state_dict", "model", "prefixed", "legacy"])
def test_containers_round_trip(tmp_path, wrap):
    src = build_model("cifar_resnet20")
    sd = src.state_dict()
    obj = {"bare": sd, "state_dict": {"state_dict": sd, "epoch": 3}, "model": {"model": sd},
           "prefixed": {"state_dict": _prefixed(sd)}, "legacy": {"state_dict": _prefixed(sd), "best_prec1": 91.7}}[wrap]
    p = tmp_path / "ck.th"
    torch.save(obj, p, _use_new_zipfile_serialization=(wrap != "legacy"))
    dst = build_model("cifar_resnet20")
    prov = load_weights(dst, p)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert len(prov["weights_sha256"]) == 64


def test_untrusted_pickle_needs_flag(tmp_path):
    sd = build_model("cifar_resnet20").state_dict()
    p = tmp_path / "pickled.pt"
    torch.save({"state_dict": sd, "extra": NotATensor()}, p)
    with pytest.raises(CheckpointError) as e:
        read_state_dict(p)
    assert "--trust-checkpoint" in str(e.value) and "arbitrary code" in str(e.value)
    with pytest.warns(UserWarning, match="full unpickling"):
        sd2 = read_state_dict(p, trust=True)
    assert set(sd2) == set(sd)


def test_wrong_depth_lists_missing_and_shapes(tmp_path):
    p = tmp_path / "r20.pt"
    torch.save(build_model("cifar_resnet20").state_dict(), p)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model("cifar_resnet56"), p)
    msg = str(e.value)
    assert "missing keys (180)" in msg and "layer1.3.conv1.weight" in msg and "unexpected keys (0)" in msg
    torch.save(build_model("cifar_resnet20", num_classes=100).state_dict(), p)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(2\).*linear.weight: checkpoint \(100, 64\)"):
        load_weights(build_model("cifar_resnet20"), p)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")
    p = tmp_path / "trunc.pt"
    torch.save(build_model("cifar_resnet20").state_dict(), p)
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a (readable )?PyTorch checkpoint"):
        read_state_dict(p)
    p.write_text("hello")
    with pytest.raises(CheckpointError, match="not a (readable )?PyTorch checkpoint"):
        read_state_dict(p)
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(p)


def test_random_bytes_are_corrupt_not_a_pickle_needing_trust(tmp_path):
    import os
    p = tmp_path / "random.pt"
    p.write_bytes(os.urandom(4096))
    for trust in (False, True):
        with pytest.raises(CheckpointError) as e:
            read_state_dict(p, trust=trust)
        assert "not a PyTorch checkpoint" in str(e.value) and "--trust-checkpoint" not in str(e.value)


@pytest.mark.parametrize("path,spec", [(RESNET20, "cifar_resnet20"), (RESNET56, "cifar_resnet56")])
def test_shared_checkpoints_load_safely(path, spec):
    need_shared(path)
    sd = read_state_dict(path)  # weights_only=True succeeds on these
    assert not any(k.startswith("module.") for k in sd)
    m = build_model(spec)
    prov = load_weights(m, path)
    assert prov["weights_sha256"].startswith(path.name.split("-")[1].split(".")[0])
