"""Shared fixtures. Tests needing ../shared skip with a reason when it is absent, and fail under
RESPROBE_REQUIRE_SHARED=1 (as CI sets)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RESPROBE_SHARED", ROOT.parent / "shared"))
MODELS = SHARED / "models"
DATA = SHARED / "data"
TEST_ARCHIVE = DATA / "cifar10-jpeg-test.tar.gz"
RESNET20 = MODELS / "resnet20-12fca82f.th"
RESNET56 = MODELS / "resnet56-4bfd9763.th"


def need_shared(*paths: Path) -> None:
    """Skip (or fail under RESPROBE_REQUIRE_SHARED=1) when a shared file is missing."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        msg = f"shared data/weights not found: {', '.join(missing)} (they live in ../shared beside the checkout)"
        if os.environ.get("RESPROBE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " and RESPROBE_REQUIRE_SHARED=1")
        pytest.skip(msg)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """Keep decoded-image caches out of the user's home during tests (one cache per test session)."""
    old = os.environ.get("RESPROBE_CACHE")
    os.environ["RESPROBE_CACHE"] = str(tmp_path_factory.mktemp("resprobe-cache"))
    yield
    if old is None:
        os.environ.pop("RESPROBE_CACHE", None)
    else:
        os.environ["RESPROBE_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar_test():
    need_shared(TEST_ARCHIVE)
    from resprobe.io.data import load_dataset
    return load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test")


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BN layers non-trivial statistics and affine parameters so eval-mode checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def role(group: str, seed=None, residual: bool = True, recipe="A", error=0.1, arch=((3,), 1000)):
    """A verdict role for unit tests of verdict functions: by default a competent network (error 0.1 ± 0.01 on
    1,000 images of 10 balanced classes) with recipe "A" and one architecture; ``error=None``: competence not
    measured."""
    from resprobe.verdict import Competence, Role
    c = None if error is None else Competence(error, max(error - 0.01, 0.0), min(error + 0.01, 1.0), 0.9, 1000)
    return Role(group, seed, residual, recipe, c, arch)
