"""The zoo and spec strings."""
from __future__ import annotations

import pytest
import torch

from resprobe.models import SpecError, build_model, parse_spec


def test_parse_spec_kwargs():
    assert parse_spec("mlp(depth=24,width=200,residual=false,branch_scale=0.5)") == (
        "mlp", {"depth": 24, "width": 200, "residual": False, "branch_scale": 0.5})
    assert parse_spec("cifar_resnet20") == ("cifar_resnet20", {})
    with pytest.raises(SpecError):
        parse_spec("mlp(depth)")


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_depth_counts_weighted_layers(depth):
    m = build_model(f"cifar_resnet{depth}")
    n_weighted = sum(isinstance(x, (torch.nn.Conv2d, torch.nn.Linear)) for x in m.modules())
    assert n_weighted == depth  # option A adds no layers: 6n+2 = stem conv + 6n convs + linear


def test_plain_twin_has_the_same_layers():
    res, plain = build_model("cifar_resnet20"), build_model("cifar_plain20")
    assert {k: v.shape for k, v in res.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    res_b = build_model("cifar_resnet20_b")
    extra = set(res_b.state_dict()) - set(plain.state_dict())
    assert extra and all(".shortcut." in k for k in extra)


def test_shared_checkpoint_key_layout():
    keys = set(build_model("cifar_resnet20").state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer2.0.conv1.weight", "layer3.2.bn2.bias", "linear.weight"} <= keys


def test_spec_forms():
    pytest.importorskip("torchvision")
    assert build_model("torchvision:resnet18", num_classes=7).fc.out_features == 7
    assert build_model("resprobe.models:cifar_resnet(depth=8)").depth == 8
    assert build_model("cifar_resnet8", num_classes=3, in_channels=1).conv1.in_channels == 1
    for bad, msg in [("nonsense", "unknown model spec"), ("torchvision:resnet9000", "unknown torchvision model"),
                     ("no_such_pkg.mod:f", "would import the module 'no_such_pkg.mod'"),
                     ("resprobe.models:nothing", "no callable"), ("cifar_resnet20(bogus=1)", "cannot build")]:
        with pytest.raises(SpecError, match=msg):
            build_model(bad)
    with pytest.raises(SpecError, match="cannot import"):
        build_model("no_such_pkg.mod:f", trust_code=True)
