"""Checkpoints and data by name, for real but offline: ../shared is served over a local HTTP server and the
registry's base URL (RESPROBE_WEIGHTS_URL) and CIFAR-10's (RESPROBE_CIFAR10_URL/_MD5) point at it, so the
download, the hash check, the cache hit, a damaged cache, a corrupt download and the offline paths all run.
The slow test clones the repository into a folder without ../shared beside it and runs the README's
newcomer commands there."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import MODELS, RESNET20, ROOT, TEST_ARCHIVE, need_shared
from mirror import cifar10_python_archive, serve
from resprobe.cli import main
from resprobe.io import published
from resprobe.io.checkpoint import sha256_file
from resprobe.io.published import WeightsError


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache and the shared models served locally."""
    need_shared(RESNET20)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with serve(MODELS) as url:
        monkeypatch.setenv("RESPROBE_WEIGHTS_URL", url)
        yield tmp_path / "torch" / "hub" / "checkpoints"


def test_registry_lists_every_he2016_net_with_url_hash_and_error():
    he = {k: v for k, v in published.REGISTRY.items() if k.startswith("he2016:")}
    assert sorted(he) == sorted(f"he2016:resnet{d}" for d in (20, 32, 44, 56, 110, 1202))
    for p in he.values():
        assert p.file.startswith(p.model.replace("cifar_", "")) and p.file.split("-")[1][:8] == p.sha256[:8]
        assert p.url.endswith("/pretrained_models/" + p.file) and 0.05 < p.error < 0.09
    # the two kept in ../shared carry their whole hash, checked here against the files
    for name in ("he2016:resnet20", "he2016:resnet56"):
        p = published.REGISTRY[name]
        if (MODELS / p.file).is_file():
            assert sha256_file(MODELS / p.file) == p.sha256


def test_download_once_then_cache_then_damaged_cache(hub, monkeypatch):
    path, entry = published.resolve("he2016:resnet20")
    assert path == hub / "resnet20-12fca82f.th" and path.read_bytes() == RESNET20.read_bytes()
    assert not [p for p in hub.iterdir() if p.name.startswith(".")]          # no partial file left
    monkeypatch.setenv("RESPROBE_WEIGHTS_URL", "http://127.0.0.1:9")         # offline now: the cache serves
    assert published.resolve("he2016:resnet20")[0] == path
    path.write_bytes(path.read_bytes()[:1000])                               # a damaged copy ...
    with pytest.raises(WeightsError, match="cannot download he2016:resnet20 from http://127.0.0.1:9"):
        published.resolve("he2016:resnet20")                                 # ... is deleted, not used
    assert not path.exists()


def test_corrupt_download_is_deleted_and_reported(tmp_path, monkeypatch):
    need_shared(RESNET20)
    bad = tmp_path / "srv"
    bad.mkdir()
    (bad / "resnet20-12fca82f.th").write_bytes(RESNET20.read_bytes()[:-10] + b"0123456789")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with serve(bad) as url:
        monkeypatch.setenv("RESPROBE_WEIGHTS_URL", url)
        with pytest.raises(WeightsError, match="failed its checksum \\(sha256 "):
            published.resolve("he2016:resnet20")
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert not cache.exists() or not list(cache.iterdir())


def test_offline_is_one_line_naming_url_cache_and_the_alternative(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("RESPROBE_WEIGHTS_URL", "http://127.0.0.1:9")
    code = main(["eval", "--model", "cifar_resnet56", "--weights", "he2016:resnet56", "--data", "synthetic(n=8)"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    for w in ("http://127.0.0.1:9/resnet56-4bfd9763.th", str(tmp_path / "torch" / "hub" / "checkpoints"),
              "--weights PATH"):
        assert w in err[0], err


def test_names_pick_model_and_normalization_and_give_the_files_numbers(hub, capsys):
    need_shared(TEST_ARCHIVE)
    args = ["--data", f"imagefolder:{TEST_ARCHIVE}", "--limit", "500", "--json", "--quiet"]
    assert main(["eval", "--model", "cifar_resnet20", "--weights", "he2016:resnet20", *args]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main(["eval", "--model", "cifar_resnet20", "--weights", str(RESNET20), "--normalize", "imagenet",
                 *args]) == 0
    by_path = json.loads(capsys.readouterr().out)
    assert by_name["error"] == by_path["error"] and by_name["normalize"] == "imagenet"
    assert main(["eval", "--model", "cifar_resnet56", "--weights", "he2016:resnet20", *args]) == 2
    assert "--model cifar_resnet20" in capsys.readouterr().err
    assert main(["eval", "--model", "cifar_resnet20", "--weights", "he2016:resnet21", *args]) == 2
    assert "did you mean" in (err := capsys.readouterr().err) and "he2016:resnet20" in err


def test_zoo_names_resolve_to_the_repository_files(capsys):
    path, e = published.resolve("zoo:cifar_resnet20")
    assert path == ROOT / "zoo" / "cifar_resnet20" / "model.pt" and e.model == "cifar_resnet20"
    assert main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["weights"]}
    assert {"he2016:resnet56", "zoo:cifar_resnet20", "zoo:cifar_plain20_seed2"} <= set(rows)
    assert rows["he2016:resnet56"]["sha256"].startswith("4bfd9763") and rows["zoo:cifar_resnet20"]["cached"]


@pytest.fixture(scope="module")
def cifar_mirror(tmp_path_factory):
    """CIFAR-10's python archive (test split, from the JPEG copy) and the shared models, served locally."""
    need_shared(TEST_ARCHIVE, RESNET20)
    d = tmp_path_factory.mktemp("mirror")
    md5 = cifar10_python_archive(TEST_ARCHIVE, d / "cifar-10-python.tar.gz", limit=2000)
    with serve(d) as data_url, serve(MODELS) as weights_url:
        yield dict(RESPROBE_CIFAR10_URL=f"{data_url}/cifar-10-python.tar.gz", RESPROBE_CIFAR10_MD5=md5,
                   RESPROBE_WEIGHTS_URL=weights_url)


def test_cifar10_download_checksum_and_offline(cifar_mirror, tmp_path, monkeypatch, capsys):
    from resprobe.io.data import load_dataset
    for k, v in cifar_mirror.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "c1"))
    with pytest.raises(Exception, match="--download"):
        load_dataset("cifar10")
    ds = load_dataset("cifar10", download=True)
    jpeg = load_dataset(f"imagefolder:{TEST_ARCHIVE}", "test")
    assert torch.equal(ds.images, jpeg.images[:2000]) and torch.equal(ds.labels, jpeg.labels[:2000])
    assert not [p for p in (tmp_path / "c1" / "data").iterdir() if p.name.startswith(".")]
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "c2"))
    monkeypatch.setenv("RESPROBE_CIFAR10_MD5", "0" * 32)
    assert main(["eval", "--model", "cifar_resnet8", "--random-init", "--data", "cifar10", "--download"]) == 2
    err = capsys.readouterr().err
    assert "failed its checksum" in err and not (tmp_path / "c2" / "data" / "cifar-10-python.tar.gz").exists()
    monkeypatch.setenv("RESPROBE_CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    assert main(["eval", "--model", "cifar_resnet8", "--random-init", "--data", "cifar10", "--download"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "http://127.0.0.1:9" in err[0] and "--data-root" in err[0]


@pytest.mark.slow
def test_a_fresh_clone_without_shared_runs_the_newcomer_commands(cifar_mirror, tmp_path):
    """git clone into a folder with no ../shared beside it, then the README's first-runs commands — the demo and
    every command that fetches by name (he2016:..., zoo:..., --data cifar10 --download) — run there as
    written (test_docs' overrides: --limit 64, one epoch), through the local mirror; offline they fail in one
    line."""
    from test_docs import adapt, commands
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    assert not (clone.parent / "shared").exists()
    env = dict(os.environ, **cifar_mirror, PYTHONPATH=str(clone), MPLBACKEND="Agg",
               TORCH_HOME=str(tmp_path / "torch"), RESPROBE_CACHE=str(tmp_path / "cache"))
    env.pop("RESPROBE_SHARED", None)
    readme = commands(clone / "README.md")
    first = [c for c in readme if c.startswith("resprobe demo") or "he2016:" in c or
             ("zoo:" in c and " cifar10 " in f"{c} ")]
    assert len(first) >= 4 and any("report" in c and "he2016:resnet56" in c for c in first)
    assert any("report" in c and "zoo:cifar_plain20" in c for c in first)
    for cmd in first:
        argv = adapt(cmd, tmp_path / "out")
        r = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
    r = subprocess.run([sys.executable, "-c", "import resprobe; print(resprobe.__file__)"], cwd=clone, env=env,
                       capture_output=True, text=True)
    assert r.stdout.startswith(str(clone))
    offline = dict(env, TORCH_HOME=str(tmp_path / "t2"), RESPROBE_CACHE=str(tmp_path / "c2"),
                   RESPROBE_WEIGHTS_URL="http://127.0.0.1:9", RESPROBE_CIFAR10_URL="http://127.0.0.1:9/c.tgz")
    for cmd in first[1:]:
        r = subprocess.run(adapt(cmd, tmp_path / "out2"), cwd=clone, env=offline, capture_output=True, text=True,
                           timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "127.0.0.1:9" in lines[0], (cmd, r.stderr[-500:])
    shutil.rmtree(clone, ignore_errors=True)
