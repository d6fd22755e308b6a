"""The one-pass identity kernels against torch (bit-identical outputs, float64 sums), the identity study with and
without them, and the batch loop's heap policy."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from resprobe import engine
from resprobe.engine import RunSpec
from resprobe.io.data import load_dataset
from resprobe.metrics import fused
from resprobe.models import build_model
from resprobe.probes import identity as I
from resprobe.study import Subject

from conftest import randomize_bn

COMPILER = (shutil.which("c++") or shutil.which("g++")) if shutil.which("ninja") else None  # torch builds with ninja


@pytest.fixture(scope="module")
def kernels():
    if not fused.available():
        if COMPILER:  # a machine that can build them must: a silent fallback would hide a broken build
            pytest.fail(f"the one-pass kernels did not build although {COMPILER} exists: {fused.failure()}")
        pytest.skip(f"no C++ compiler or ninja: {fused.failure()}")
    return fused


@pytest.mark.parametrize("n", [1, 7, 63, 64, 65, 1023, 1024, 1025, 3000, 16384])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("add", [True, False])
def test_add_post_sums_equal_torch(kernels, n, relu, add):
    g = torch.Generator().manual_seed(n)
    s, f = torch.randn(5, n, generator=g) * 3, torch.randn(5, n, generator=g)
    s[1, n // 2] = float("nan")  # NaN kept by the ReLU, as torch.relu keeps it
    s[2, 0] = float("inf")
    y, sums = kernels.add_post_sums(s, f, relu, add)
    ref = s + f if add else f.clone()
    ref = torch.relu(ref) if relu else ref
    assert torch.equal(y.view(torch.int32), ref.view(torch.int32))  # bit for bit, NaN and inf included
    want = torch.stack([(ref.double() ** 2).sum(1), ((ref.double() - s.double()) ** 2).sum(1), (s.double() ** 2).sum(1)], 1)
    assert sums.dtype == torch.float64 and sums.shape == (5, 3)
    torch.testing.assert_close(sums, want, rtol=2e-6, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("shape", [(3, 1), (4, 1000), (256, 16, 8, 8), (2, 3, 33, 17)])
def test_row_sums_equal_float64_sums(kernels, shape):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) + 0.5
    flat = t.reshape(shape[0], -1)
    got = kernels.row_sums(flat)
    want = torch.stack([flat.double().sum(1), (flat.double() ** 2).sum(1)], 1)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6)


def test_kernels_refuse_what_they_do_not_handle(kernels):
    a = torch.randn(4, 6, 5)
    assert kernels.add_post_sums(a.transpose(1, 2), a.transpose(1, 2), True) is None  # not contiguous
    assert kernels.add_post_sums(a.double(), a.double(), True) is None
    assert kernels.add_post_sums(a, a[:, :5], True) is None
    assert kernels.add_post_sums(a.requires_grad_(True), a, True) is None  # autograd: torch operations
    assert kernels.row_sums(torch.randn(4, 6).bfloat16()) is None


@pytest.mark.parametrize("shape,m", [((64, 16, 8, 8), 32), ((70, 3, 5, 7), 5), ((64, 17), 4), ((33, 1000), 7),
                                     ((8, 15), 1), ((12, 2, 3), 3), ((40, 4096), 6), ((3, 10), 4)])
def test_grams_equal_float64_products(kernels, shape, m):
    """Every group's Gram matrix against float64 products: group sizes not a multiple of the 4-row blocks, row
    lengths not a multiple of the 16 lanes or spanning several 1,024-element slices, a remainder dropped."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(m)) + 0.3
    got = kernels.grams(x, m)
    nb = shape[0] // m
    flat = x[:nb * m].reshape(nb, m, x[0].numel()).double()
    want = flat @ flat.transpose(1, 2)
    assert got.dtype == torch.float32 and got.shape == (nb, m, m)
    assert torch.equal(got, got.transpose(1, 2))  # symmetric exactly: one sum per pair
    if nb:
        torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=2e-6 * float(want.abs().max()))


def test_grams_write_into_the_tensor_given(kernels):
    x = torch.randn(96, 50, generator=torch.Generator().manual_seed(0))
    buf = torch.full((5, 32, 32), -1.0)
    got = kernels.grams(x, 32, buf[1:4])
    assert got.data_ptr() == buf[1].data_ptr() and torch.equal(got, kernels.grams(x, 32))
    assert (buf[0] == -1).all() and (buf[4] == -1).all()  # nothing outside the slice
    for bad in (torch.full((2, 32, 32), 7.0), torch.full((3, 32, 32), 7.0, dtype=torch.float64),
                torch.full((3, 32, 64), 7.0)[..., :32]):  # too few groups, float64, not contiguous
        assert kernels.grams(x, 32, bad) is None and (bad == 7).all()  # refused, nothing written
    a = torch.randn(8, 6)
    assert kernels.grams(a.t(), 2) is None and kernels.grams(a.double(), 2) is None and kernels.grams(a, 0) is None
    assert kernels.grams(a.requires_grad_(True), 2) is None
    assert kernels.grams(torch.randn(513, 3), 513) is None and kernels.grams(torch.randn(512, 3), 512) is not None


def test_identity_gram_slots_keep_the_activations_precision():
    x = torch.randn(64, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e3 + 1
    slot = torch.zeros(2, 32, 32)
    got = I._grams(x, 32, slot)
    assert got.dtype == torch.float64 and torch.equal(got, x.reshape(2, 32, 40) @ x.reshape(2, 32, 40).transpose(1, 2))
    x32 = x.float()
    assert I._grams(x32, 32, slot).data_ptr() == slot.data_ptr()  # float32 activations: into the slot


def test_post_operations_recognized():
    from resprobe.anatomy.parts import identity
    assert I._relu_post(torch.relu) is True and I._relu_post(torch.nn.functional.relu) is True
    assert I._relu_post(torch.nn.ReLU(inplace=True)) is True and I._relu_post(identity) is False
    assert I._relu_post(torch.nn.GELU()) is None and I._relu_post(torch.sigmoid) is None


def _profile(model, data, **kw):
    spec = RunSpec(batch_size=32, progress=False, n_boot=100, seed=3)
    df, _, _ = I.profile(Subject("m", model, "none"), data, spec, I.IdentityOptions(**kw))
    return df


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic(n=80,classes=4)", "test")


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_preresnet20", "cifar_resnet20_b", "cifar_plain20",
                                  "torchvision:resnet18"])
def test_identity_study_same_with_and_without_kernels(kernels, data, name, monkeypatch):
    if name.startswith("torchvision"):
        pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = randomize_bn(build_model(name, num_classes=4), seed=0).eval()
    calls, cols = [], []
    real_add, real_rows, real_grams = fused.add_post_into, fused.row_sums_into, fused.grams
    gram_calls = []
    monkeypatch.setattr(fused, "grams", lambda t, m, out=None: gram_calls.append((m, out is not None)) or real_grams(t, m, out))
    monkeypatch.setattr(fused, "add_post_into", lambda *a, **k: calls.append(1) or real_add(*a, **k))
    monkeypatch.setattr(fused, "row_sums_into", lambda t, out, col: cols.append(col) or real_rows(t, out, col))
    on = _profile(m, data)
    assert bool(calls) == (name != "cifar_plain20"), "the fused path taken where it applies, and only there"
    # per batch (each starts with the same column: the stem's), the layers summed on their own: from the second
    # batch on, a branch output's response sums are the ΣF, ΣF² of the addition's pass
    per_batch = np.diff(np.flatnonzero(np.r_[np.asarray(cols) == cols[0], True]))
    assert len(per_batch) == 3
    assert (per_batch[1] < per_batch[0]) == (name != "cifar_plain20") and per_batch[1] == per_batch[2]
    # CKA's Gram matrices by the kernel, into the slots made before the pass; a last, smaller group (80 images in
    # minibatches of 32) into a new tensor
    assert {c for c in gram_calls} == {(32, True), (16, False)}
    monkeypatch.setattr(fused, "add_post_into", lambda *a, **k: None)
    monkeypatch.setattr(fused, "row_sums_into", lambda *a, **k: False)
    monkeypatch.setattr(fused, "grams", lambda *a, **k: None)
    off = _profile(m, data)
    pd.testing.assert_frame_equal(on.drop(columns=["value", "ci_low", "ci_high"]),
                                  off.drop(columns=["value", "ci_low", "ci_high"]))
    for c in ("value", "ci_low", "ci_high"):
        np.testing.assert_allclose(on[c].to_numpy(float), off[c].to_numpy(float), rtol=1e-5, atol=1e-7)


def test_pending_response_sums_refuse_an_output_changed_in_place():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1))
    table = I._Table(0, 1)
    rs = I._ResponseStd(model, I.response_layers(model), table)  # measures the 3x3 convolution "0"
    table.begin(3)
    rs.final = {0}
    out = torch.randn(3, 2, 4, 4)
    rs._update(0, "0", out)
    col = table.layer(0)
    assert rs.is_pending(out) and np.isnan(table.np[:, col:col + 2]).all()  # deferred
    rs.flush()
    np.testing.assert_allclose(table.np[:, col + 1], (out.double() ** 2).sum((1, 2, 3)).numpy(), rtol=1e-6)
    rs._update(0, "0", out)
    out.relu_()
    with pytest.raises(RuntimeError, match="changed in place"):
        rs.flush()


def test_kernels_write_into_their_columns_of_a_table_only(kernels):
    g = torch.Generator().manual_seed(0)
    s, f = torch.randn(6, 3, 5, 5, generator=g), torch.randn(6, 3, 5, 5, generator=g)
    table = torch.full((6, 9), float("nan"), dtype=torch.float64)
    y = kernels.add_post_into(s, f, True, table, 2)
    assert torch.equal(y, torch.relu(s + f))
    ref_y, ref = kernels.add_post_sums(s, f, True, f_sums=True)
    assert torch.equal(table[:, 2:7], ref)  # the same sums, bit for bit
    assert kernels.row_sums_into(f, table, 7)
    assert torch.equal(table[:, 7:9], table[:, 5:7])  # ΣF, ΣF² of the addition equal row_sums(F)
    assert torch.isnan(table[:, :2]).all()
    # no room, a table of other rows, another dtype: refused, nothing written
    assert kernels.add_post_into(s, f, True, table, 5) is None and kernels.row_sums_into(f, table, 8) is False
    assert kernels.add_post_into(s, f, True, table[:5], 0) is None
    assert kernels.row_sums_into(f, table.float(), 0) is False
    assert kernels.add_post_into(s, f, True, table[:, ::2], 0) is None  # columns not adjacent
    assert torch.isnan(table[:, :2]).all()


class _FakeHeap(engine._Heap):
    def __init__(self, sizes):
        super().__init__()
        self.tuned = True
        self._mallopt = lambda *a: 1
        self.sizes = iter(sizes)
        self.trimmed_at = []

    def resident(self):
        return next(self.sizes)

    def trim(self):
        self.trimmed_at.append(self.depth)
        self.trims += 1


def test_heap_trims_only_when_the_resident_size_grew():
    mb = 1 << 20
    # the reference is the largest of the first four batches (620 MB): 680 MB is within a tenth + 64 MB of it,
    # 760 MB is not
    h = _FakeHeap([500 * mb, 520 * mb, 610 * mb, 620 * mb, 680 * mb, 760 * mb, 510 * mb])
    with h:
        trims = []
        for _ in range(7):
            h.after_batch()
            trims.append(h.trims)
        assert trims == [0, 0, 0, 0, 0, 1, 1]
        with h:  # a nested loop keeps the outer one's settings
            pass
        assert h.trims == 1
    assert h.trims == 2  # the outermost loop's end hands the freed heap back
    h = _FakeHeap([500 * mb] * 4 + [620 * mb])
    with h:  # a new outermost loop starts a new reference
        for _ in range(5):
            h.after_batch()
        assert h.trims == 1 and h.base == 500 * mb


def test_heap_does_not_trim_a_steady_working_set_after_every_batch():
    mb = 1 << 20
    # four light batches (700 MB), then a steady 940 MB: one trim (it might have been growth), then the level
    # is recognised as the working set when it comes back; real growth past it is trimmed again
    sizes = [700 * mb] * 4 + [940 * mb] * 6 + [1050 * mb, 945 * mb, 1300 * mb]
    h = _FakeHeap(sizes)
    with h:
        trims = []
        for _ in sizes:
            h.after_batch()
            trims.append(h.trims)
    assert trims == [0] * 4 + [1] * 8 + [2]


def test_tensors_off_the_cpu_never_build_the_kernels(monkeypatch):
    # a GPU run (here: the meta device, which CI has) takes the torch path without compiling the CPU kernels
    monkeypatch.setattr(fused, "_module", None)
    monkeypatch.setattr(fused, "_load", lambda: pytest.fail("the kernels were loaded for a tensor off the CPU"))
    x = torch.empty(2, 3, device="meta")
    assert fused.add_post_into(x, x, True, torch.zeros(2, 5, dtype=torch.float64), 0) is None
    assert fused.row_sums_into(x, torch.zeros(2, 2, dtype=torch.float64), 0) is False
    assert fused.grams(x, 2) is None
