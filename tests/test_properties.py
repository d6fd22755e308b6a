"""Property tests over randomly generated residual networks (hypothesis): the anatomy decomposes every
one exactly (≤ 1e-5 in eval mode), and the lesion engine equals naive surgery (the branch's last layer
zeroed in a copy, the model's own forward) for random deletions.

Families drawn: the zoo's CIFAR ResNets (depth, width, shortcut A/B, post- or pre-activation), torchvision
ResNets (BasicBlock/Bottleneck, stage depths, widths), and residual MLPs of random composition decomposed
automatically from their own forward (pre-norm, post-norm, activation after the addition or not).
A few dozen examples run by default; ``RESPROBE_PROPERTY_EXAMPLES=1000 pytest -m slow
tests/test_properties.py`` is the long run recorded in docs/results.md.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resprobe.anatomy import anatomy
from resprobe.io.data import Dataset
from resprobe.models import build_model
from resprobe.probes.lesion import LesionConfig

import oracle
from conftest import randomize_bn
from oracle import engine_predictions, naive_predictions

_ZERO = oracle.zero_branch

EXAMPLES = int(os.environ.get("RESPROBE_PROPERTY_EXAMPLES", "25"))
SETTINGS = dict(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class RandomBlock(nn.Module):
    """A residual block of random composition; ``out`` is the branch's last layer (the oracle zeroes it)."""

    def __init__(self, width: int, depth: int, prenorm: bool, postnorm: bool, act_after: bool, scale: float):
        super().__init__()
        layers = []
        if prenorm:
            layers.append(nn.LayerNorm(width))
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, width)
        self.post = nn.LayerNorm(width) if postnorm else nn.Identity()
        self.act_after = act_after
        self.scale = scale

    def forward(self, x):
        y = x + self.scale * self.out(self.body(x))
        y = self.post(y)
        return torch.relu(y) if self.act_after else y


class RandomNet(nn.Module):
    def __init__(self, blocks, width: int, classes: int = 4):
        super().__init__()
        self.embed = nn.Linear(12, width)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.blocks(self.embed(x.flatten(1))))


@st.composite
def networks(draw):
    kind = draw(st.sampled_from(["cifar", "torchvision", "mlp"]))
    seed = draw(st.integers(0, 10_000))
    torch.manual_seed(seed)
    if kind == "cifar":
        pre = draw(st.booleans())
        n = draw(st.integers(1, 2))
        spec = f"cifar_{'preresnet' if pre else 'resnet'}{6 * n + 2}(width={draw(st.sampled_from([2, 4, 8]))}," \
               f"shortcut={draw(st.sampled_from(['A', 'B']))})"
        return randomize_bn(build_model(spec, num_classes=4), seed).eval(), (3, 8, 8), "cifar"
    if kind == "torchvision":
        tv = pytest.importorskip("torchvision")
        block = draw(st.sampled_from([tv.models.resnet.BasicBlock, tv.models.resnet.Bottleneck]))
        layers = [draw(st.integers(1, 2)) for _ in range(4)]
        width = 64 if block is tv.models.resnet.BasicBlock else draw(st.sampled_from([16, 32, 64]))
        m = tv.models.resnet.ResNet(block, layers, num_classes=4, width_per_group=width)
        return randomize_bn(m, seed).eval(), (3, 32, 32), "torchvision"
    width = draw(st.sampled_from([4, 8, 16]))
    blocks = [RandomBlock(width, draw(st.integers(1, 3)), draw(st.booleans()), draw(st.booleans()),
                          draw(st.booleans()), draw(st.sampled_from([1.0, 0.5]))) for _ in range(draw(st.integers(2, 5)))]
    return RandomNet(blocks, width).eval(), (1, 3, 4), "mlp"


def _zero_random_branch(model, unit):
    mods = dict(model.named_modules())
    if isinstance(mods.get(unit), RandomBlock):
        with torch.no_grad():
            mods[unit].out.weight.zero_()
            mods[unit].out.bias.zero_()
    else:
        _ZERO(model, unit)


@settings(**SETTINGS)
@given(net=networks(), data_seed=st.integers(0, 100), k=st.integers(1, 3))
def test_random_networks_decompose_and_lesions_equal_naive_surgery(net, data_seed, k):
    model, shape, kind = net
    view = anatomy(model, shape)
    g = torch.Generator().manual_seed(data_seed)
    x = torch.randn(5, *shape, generator=g)
    assert view.check_decomposition(x) <= 1e-5
    images = (torch.rand(12, *shape, generator=g) * 255).to(torch.uint8)
    data = Dataset(images, torch.arange(12) % 4, ["a", "b", "c", "d"], "random", "test")
    res = [u.index for u in view if u.residual]
    rng = np.random.default_rng(data_seed)
    chosen = tuple(sorted(rng.choice(res, size=min(k, len(res)), replace=False).tolist()))
    configs = [LesionConfig("baseline"), LesionConfig("random-k", chosen, k=len(chosen))]
    ours = engine_predictions(view, data, configs, batch_size=5)
    oracle.zero_branch = _zero_random_branch
    try:
        for c, p in zip(configs, ours):
            ref = naive_predictions(model, view.names, data, c, batch_size=5)
            assert np.array_equal(p, ref), (kind, c)
    finally:
        oracle.zero_branch = _ZERO
