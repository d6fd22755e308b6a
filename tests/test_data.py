"""Data specs: image folders and archives, cache, CIFAR-10 python format, Fashion-MNIST IDX, synthetic."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resprobe.io import data as D
from resprobe.io import named as N
from resprobe.io.data import DataError, load_dataset, subset_indices

from conftest import TEST_ARCHIVE, need_shared


def _png(color, size=8):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_archive(path, files, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


COLORS = {"cat": (255, 0, 0), "ant": (0, 255, 0), "bee": (0, 0, 255)}


@pytest.fixture
def archive(tmp_path):
    files = {}
    for split in ("train", "test"):
        for c, col in COLORS.items():
            for i in range(3 if split == "train" else 2):
                files[f"root/{split}/{c}/{i:03d}.png"] = _png(col)
    p = tmp_path / "toy.tar.gz"
    _write_archive(p, files)
    return p


def test_imagefolder_archive_splits_and_class_order(archive):
    ds = load_dataset(f"imagefolder:{archive}", "test")
    assert ds.classes == ["ant", "bee", "cat"]  # sorted names, torchvision's rule
    assert len(ds) == 6 and ds.input_shape == (3, 8, 8)
    for img, lab in zip(ds.images, ds.labels):
        assert tuple(img[:, 0, 0].tolist()) == COLORS[ds.classes[lab]]
    assert len(load_dataset(f"imagefolder:{archive}", "train")) == 9
    with pytest.raises(DataError, match="available splits: test, train"):
        load_dataset(f"imagefolder:{archive}", "val")


def test_imagefolder_directory(tmp_path):
    for c, col in COLORS.items():
        (tmp_path / "d" / c).mkdir(parents=True)
        (tmp_path / "d" / c / "a.png").write_bytes(_png(col))
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    assert ds.split == "all" and ds.labels.tolist() == [0, 1, 2]


def test_cache_is_used_on_second_load(archive, monkeypatch, tmp_path):
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "fresh-cache"))
    first = load_dataset(f"imagefolder:{archive}", "test")
    assert first.source["cached"] is False

    def boom(*a, **k):
        raise AssertionError("archive re-read despite the cache")

    monkeypatch.setattr(D, "read_members", boom)
    second = load_dataset(f"imagefolder:{archive}", "test")
    assert second.source["cached"] is True
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_corrupt_archive_names_the_file(archive, tmp_path):
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated.tar.gz"):
        load_dataset(f"imagefolder:{bad}", "test", cache=False)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(DataError, match="junk.tar"):
        load_dataset(f"imagefolder:{junk}")
    badimg = tmp_path / "badimg.tar.gz"
    _write_archive(badimg, {"test/cat/0.png": b"garbage", "test/ant/0.png": _png((0, 0, 0))})
    with pytest.raises(DataError, match="cannot decode image test/cat/0.png"):
        load_dataset(f"imagefolder:{badimg}", "test", cache=False)
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'missing.tar.gz'}")


def test_limit_is_seeded_subset_not_prefix():
    idx = subset_indices(10000, 500)
    assert torch.equal(idx, subset_indices(10000, 500))  # deterministic
    assert idx.max() > 5000 and len(set(idx.tolist())) == 500  # not the first N
    assert torch.equal(idx, idx.sort().values)
    labels = torch.arange(10000) // 1000  # sorted by class, like the archives
    assert len(labels[idx].unique()) == 10
    assert not torch.equal(idx, subset_indices(10000, 500, seed=1))


def test_batches_independent_of_batch_size():
    ds = load_dataset("synthetic", "test").subset(100)
    a = torch.cat([x for x, _, _ in ds.batches(7, "cifar10")])
    b = torch.cat([x for x, _, _ in ds.batches(64, "cifar10")])
    assert torch.equal(a, b)
    mean = torch.tensor(D.NORMALIZATIONS["cifar10"][0]).view(1, 3, 1, 1)
    std = torch.tensor(D.NORMALIZATIONS["cifar10"][1]).view(1, 3, 1, 1)
    assert torch.allclose(a, (ds.images.float() / 255 - mean) / std)
    with pytest.raises(DataError, match="unknown normalization"):
        next(ds.batches(8, "zscore"))


def _write_cifar(root, n_per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in N.CIFAR10_CLASSES]}, f)
    return batches


def test_cifar10_python_format(tmp_path):
    batches = _write_cifar(tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    data, labels = batches["test_batch"]
    assert torch.equal(test.images, torch.from_numpy(data.reshape(-1, 3, 32, 32)))
    assert test.labels.tolist() == labels and test.classes[0] == "airplane"
    assert len(load_dataset("cifar10", "train", root=tmp_path)) == 30


def test_cifar10_missing_without_download_is_clear(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "test", root=tmp_path / "empty")
    assert "--download" in str(e.value) and "--data-root" in str(e.value)


def test_cifar10_refuses_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": torch.nn.Linear(1, 1), b"labels": []}, f)
    with pytest.raises(DataError, match="not a valid CIFAR-10"):
        load_dataset("cifar10", "test", root=tmp_path)


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def test_fashion_mnist_idx(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, 5).astype(np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(labs))
    ds = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert ds.input_shape == (1, 28, 28) and torch.equal(ds.images[:, 0], torch.from_numpy(imgs))
    assert ds.labels.tolist() == labs.tolist()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="not a valid IDX"):
        load_dataset("fashion-mnist", "test", root=tmp_path)


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(N, "FASHION_DEBIAN", tmp_path / "none")
    with pytest.raises(DataError, match="--download"):
        load_dataset("fashion-mnist", "train", root=tmp_path)


def test_synthetic_seeded_and_balanced():
    a = load_dataset("synthetic(n=400,classes=4,seed=3)", "train")
    b = load_dataset("synthetic(n=400,classes=4,seed=3)", "train")
    assert torch.equal(a.images, b.images) and a.labels.bincount().tolist() == [100] * 4
    assert not torch.equal(a.images, load_dataset("synthetic(n=400,classes=4,seed=3)", "test").images)
    with pytest.raises(DataError):
        load_dataset("synthetic(classes=40)")
    with pytest.raises(DataError, match="unknown data spec"):
        load_dataset("mnist")


def test_augment_is_crop_and_flip():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    out = D._augment(x, g, pad=0)  # no padding: only flips are possible
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    out = D._augment(x, torch.Generator().manual_seed(1), pad=2)
    assert out.shape == x.shape


def test_shared_jpeg_test_set(cifar_test):
    need_shared(TEST_ARCHIVE)
    assert len(cifar_test) == 10000 and cifar_test.labels.bincount().tolist() == [1000] * 10
    assert cifar_test.classes[:3] == ["airplane", "automobile", "bird"]
