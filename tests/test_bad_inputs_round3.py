"""Reliability round 3, table-driven: no spec runs code without consent (and library loaders never), archives
and images are read within limits checked before reading, every flag is validated (type, finite, range)
before any work, and a full disk or a long name is one line. Each bad input gives exit status 2, one line
naming the problem, no traceback, no payload run, and leaves --out as it was. Then the right answers that
used to be wrong: 16-bit images, the path-length summary of a partial --k, safetensors checkpoints."""
from __future__ import annotations

import errno
import io
import os
import struct
import sys
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from resprobe.cli import main
from resprobe.errors import UsageError
from resprobe.models import SpecError, build_model

SYN = ["--data", "synthetic(n=32)", "--normalize", "none"]
R8 = ["--model", "cifar_resnet8", "--random-init"]


def _png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    """members: (name, bytes) for files, (name, 'dir'|'sym'|'fifo', target) for others."""
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            info = tarfile.TarInfo(m[0])
            if isinstance(m[1], bytes):
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "fifo": tarfile.FIFOTYPE,
                         "hard": tarfile.LNKTYPE}[m[1]]
            info.linkname = m[2] if len(m) > 2 else ""
            tf.addfile(info)
    return path


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w×h pixels (8-bit grey) with no pixel data: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


MARK = "resprobe_payload_ran"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("r3")
    e = {"dir": d, "mark": d / MARK, "imported": d / "module_imported"}
    img = _png(np.full((8, 8, 3), 100, np.uint8))
    ok = [(f"{c}/{i}.png", img) for c in ("ant", "bee") for i in range(2)]
    e["dotdot"] = _tar(d / "dotdot.tar.gz", ok + [("../cat/0.png", img)])
    e["absolute"] = _tar(d / "absolute.tar.gz", ok + [("/etc/cat/0.png", img)])
    e["symlink"] = _tar(d / "symlink.tar.gz", ok + [("cat/0.png", "sym", "/etc/passwd")])
    e["hardlink"] = _tar(d / "hardlink.tar.gz", ok + [("cat/0.png", "hard", "ant/0.png")])
    e["fifo"] = _tar(d / "fifo.tar.gz", ok + [("cat/0.png", "fifo")])
    with zipfile.ZipFile(d / "dotdot.zip", "w") as z:
        for name, data in ok + [("../cat/0.png", img)]:
            z.writestr(name, data)
    e["dotdot_zip"] = d / "dotdot.zip"
    e["good"] = _tar(d / "good.tar.gz", ok)
    with zipfile.ZipFile(d / "enc.zip", "w") as z:
        for name, data in ok:
            z.writestr(name, data)
    raw = bytearray((d / "enc.zip").read_bytes())
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):    # the "encrypted" flag on every member
        i = raw.find(sig)
        while i >= 0:
            raw[i + at] |= 1
            i = raw.find(sig, i + 4)
    (d / "enc.zip").write_bytes(bytes(raw))
    e["encrypted"] = d / "enc.zip"
    (d / "emptyimg" / "ant").mkdir(parents=True)
    (d / "emptyimg" / "bee").mkdir()
    (d / "emptyimg" / "ant" / "0.png").write_bytes(img)
    (d / "emptyimg" / "bee" / "0.png").write_bytes(b"")
    e["emptyimg"] = d / "emptyimg"
    e["bomb_png"] = _tar(d / "bombpng.tar.gz", ok + [("cat/0.png", _png_header_only(20000, 20000))])
    # a real bomb: 300 MB of zeros in one member, a few hundred kB compressed
    with tarfile.open(d / "bomb.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("a/0.png")
        info.size = 300 * 2 ** 20

        class Zeros(io.RawIOBase):
            left = info.size

            def readable(self):
                return True

            def readinto(self, b):
                k = min(len(b), self.left)
                b[:k] = bytes(k)
                self.left -= k
                return k
        tf.addfile(info, io.BufferedReader(Zeros()))
    e["bomb"] = d / "bomb.tar.gz"
    torch.manual_seed(0)
    sd = build_model("cifar_resnet8", num_classes=4).state_dict()
    torch.save({k: (v * 100).to(torch.int64) if v.is_floating_point() else v for k, v in sd.items()}, d / "int.pt")
    e["int"] = d / "int.pt"
    torch.save(sd, d / "r8.pt")
    e["r8"] = d / "r8.pt"
    (d / "adir").mkdir()
    torch.save(sd, d / "adir" / "model.pt")
    e["adir"] = d / "adir"
    np.save(d / "arr.npy", np.zeros(3))
    e["npy"] = d / "arr.npy"
    (d / "random.pt").write_bytes(os.urandom(4096))
    e["random"] = d / "random.pt"

    class Payload:
        def __reduce__(self):
            return (open, (str(e["mark"]), "w"))
    torch.save({"x": Payload()}, d / "evil.pt")
    e["evil"] = d / "evil.pt"
    mod = d / "mods"
    mod.mkdir()
    (mod / "r3_user_models.py").write_text(
        f"open({str(e['imported'])!r}, 'w').close()\n"
        "from torch import load\n"
        "from resprobe.models import cifar_resnet\n"
        "def make(num_classes=10):\n    return cifar_resnet(depth=8, num_classes=num_classes)\n")
    sys.path.insert(0, str(mod))
    yield e
    sys.path.remove(str(mod))


CASES = [
    # code from a spec
    ("torch.load through a spec", ["info", "--model", "torch:load(f='{evil}', weights_only=False)"],
     ["'torch'", "--trust-code"]),
    ("torch.load through a spec, consent given", ["info", "--model", "torch:load(f='{evil}', weights_only=False)",
                                                  "--trust-code"], ["torch.serialization", "not a model class"]),
    ("torch.load through a spec, with consent", ["info", "--model", "torch.serialization:load(f='{evil}')",
                                                 "--trust-code"], ["not a model class"]),
    ("numpy.load through a spec", ["info", "--model", "numpy:load(file='{npy}', allow_pickle=True)",
                                   "--trust-code"], ["numpy", "not a model class"]),
    ("a library's class without consent", ["info", "--model", "torch.nn:Identity"], ["--trust-code"]),
    ("pickle through a spec", ["info", "--model", "pickle:loads(data=b'x')", "--trust-code"], ["standard-library"]),
    ("a user's module without consent", ["info", "--model", "r3_user_models:make"], ["--trust-code",
                                                                                      "r3_user_models"]),
    ("torch.load re-exported by a trusted module", ["info", "--model", "r3_user_models:load(f='{evil}')",
                                                    "--trust-code"], ["torch.serialization", "not a model class"]),
    # archives and images
    ("'..' member in a tar", ["eval", *R8, "--data", "imagefolder:{dotdot}"], ["'../cat/0.png'", "outside"]),
    ("'..' member in a zip", ["eval", *R8, "--data", "imagefolder:{dotdot_zip}"], ["'../cat/0.png'", "outside"]),
    ("absolute member", ["eval", *R8, "--data", "imagefolder:{absolute}"], ["absolute name"]),
    ("symlink member", ["eval", *R8, "--data", "imagefolder:{symlink}"], ["cat/0.png", "link"]),
    ("hard-link member", ["eval", *R8, "--data", "imagefolder:{hardlink}"], ["cat/0.png", "link"]),
    ("fifo member", ["eval", *R8, "--data", "imagefolder:{fifo}"], ["cat/0.png", "not a file"]),
    ("300 MB member in 300 kB", ["eval", *R8, "--data", "imagefolder:{bomb}"],
     ["a/0.png", "RESPROBE_MAX_MEMBER_BYTES"]),
    ("20000x20000 PNG", ["eval", *R8, "--data", "imagefolder:{bomb_png}"],
     ["400,000,000", "RESPROBE_MAX_IMAGE_PIXELS"]),
    ("a device as data", ["eval", *R8, "--data", "imagefolder:/dev/zero"], ["/dev/zero", "not a folder or a regular"]),
    ("an encrypted zip", ["eval", *R8, "--data", "imagefolder:{encrypted}"], ["encrypted", "password"]),
    ("an empty image file", ["eval", *R8, "--data", "imagefolder:{emptyimg}"], ["bee/0.png", "empty file"]),
    ("imagefolder: without a path", ["eval", *R8, "--data", "imagefolder:"], ["names no folder"]),
    ("synthetic data of a billion images", ["eval", *R8, "--data", "synthetic(n=1000000000)"], ["n must be"]),
    ("a split synthetic data lacks", ["eval", *R8, *SYN, "--split", "bogus"], ["'bogus'", "train and test"]),
    ("a 2,000,000-unit ResNet", ["info", "--model", "cifar_resnet2000000"], ["depth", "1..6002"]),
    ("a network of zero classes", ["info", "--model", "cifar_resnet8(num_classes=0)"], ["num_classes"]),
    ("an MLP of width 0", ["info", "--model", "mlp(width=0)"], ["width"]),
    ("an input of 3e10 values", ["info", "--model", "cifar_resnet8", "--input-size", "3,100000,100000"],
     ["--input-size", "67,108,864"]),
    ("eps below float32 resolution", ["amplify", *R8, *SYN, "--eps", "1e-300", "--out", "{out}"], ["--eps", "1e-6"]),
    ("synthetic nets too deep for memory", ["gradcorr", "synthetic", "--depths", "10000000", "--out", "{out}"],
     ["GiB"]),
    # checkpoints
    ("integer weights", ["eval", "--model", "cifar_resnet8", "--weights", "{int}", *SYN], ["int64", "integers"]),
    ("a folder as weights", ["eval", "--model", "cifar_resnet8", "--weights", "{adir}", *SYN],
     ["is a folder", "model.pt"]),
    ("a device as weights", ["eval", "--model", "cifar_resnet8", "--weights", "/dev/zero", *SYN],
     ["not a regular file"]),
    ("a numpy file as weights", ["eval", "--model", "cifar_resnet8", "--weights", "{npy}", *SYN], ["NumPy"]),
    ("random bytes as weights", ["eval", "--model", "cifar_resnet8", "--weights", "{random}", *SYN],
     ["not a PyTorch checkpoint"]),
    # flags
    ("threshold inf", ["identity", *R8, *SYN, "--threshold", "inf", "--out", "{out}"], ["--threshold", "finite"]),
    ("threshold above 1", ["identity", *R8, *SYN, "--threshold", "2", "--out", "{out}"], ["--threshold", "(0, 1]"]),
    ("beta nan", ["gradcorr", "synthetic", "--beta", "nan", "--out", "{out}"], ["--beta", "finite"]),
    ("span inf", ["gradcorr", *R8, *SYN, "--span", "inf", "--out", "{out}"], ["--span"]),
    ("step 0", ["paths", *R8, *SYN, "--k", "1:3:0", "--out", "{out}"], ["--k", "step"]),
    ("a range of 10^11 values", ["paths", *R8, *SYN, "--k", "0:99999999999", "--out", "{out}"], ["--k", "100,000"]),
    ("seed -1 (random-k)", ["lesion", *R8, *SYN, "--mode", "random-k", "--k", "1", "--seed", "-1", "--out", "{out}"],
     ["--seed", "0.."]),
    ("seed 2^64", ["eval", *R8, *SYN, "--seed", "18446744073709551616"], ["--seed"]),
    ("momentum -5", ["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs", "1", "--momentum",
                     "-5", "--out", "{out}"], ["--momentum", "[0, 1)"]),
    ("momentum nan", ["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs", "1", "--momentum",
                      "nan", "--out", "{out}"], ["--momentum", "finite"]),
    ("weight decay -1", ["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs", "1",
                         "--weight-decay", "-1", "--out", "{out}"], ["--weight-decay"]),
    ("lr inf", ["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs", "1", "--lr", "inf",
                "--out", "{out}"], ["--lr", "finite"]),
    ("device mps", ["eval", *R8, *SYN, "--device", "mps"], ["mps", "--device cpu"]),
    ("device cuda:7", ["eval", *R8, *SYN, "--device", "cuda:7"], ["cuda:7"]),
    ("10^8 bootstrap resamples", ["lesion", *R8, *SYN, "--n-boot", "100000000", "--out", "{out}"],
     ["--n-boot", "100,000"]),
    ("a 300-character --out name", ["lesion", *R8, *SYN, "--out", "{out}/" + "x" * 300], ["too long"]),
    ("a limit that is not a number", ["eval", *R8, "--data", "imagefolder:{good}"], ["RESPROBE_MAX_MEMBERS"]),
]
ENV = {"a limit that is not a number": {"RESPROBE_MAX_MEMBERS": "lots"}}


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_round3_bad_input_gives_one_clear_line(env, tmp_path, capsys, monkeypatch, name, argv, words):
    for k, v in ENV.get(name, {}).items():
        monkeypatch.setenv(k, v)
    sys.modules.pop("r3_user_models", None)
    env["imported"].unlink(missing_ok=True)
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesion.csv").write_text("precious,rows\n1,2\n")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code = _run([a.format(**{k: str(v) for k, v in dict(env, out=out).items()}) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("resprobe: error:") and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (name, w, lines[0])
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in out.iterdir()) == ["lesion.csv"]     # no stray temporary files either
    assert not env["mark"].exists(), "a payload ran"
    if "--trust-code" not in argv:
        assert not env["imported"].exists(), "a user's module was imported without consent"


def test_a_trusted_user_factory_runs_and_only_then(env, capsys):
    sys.modules.pop("r3_user_models", None)
    env["imported"].unlink(missing_ok=True)
    assert _run(["info", "--model", "r3_user_models:make"]) == 2 and not env["imported"].exists()
    assert _run(["info", "--model", "r3_user_models:make", "--trust-code"]) == 0
    assert env["imported"].exists()        # the module ran: that is what --trust-code consents to


def test_specs_in_files_never_run_code(env, tmp_path, capsys):
    """A config.json beside the weights names a model spec: it is recorded, never built."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.pt").write_bytes(env["r8"].read_bytes())
    (run / "config.json").write_text('{"model": "r3_user_models:make", "normalize": "none", "lr": 0.1}')
    sys.modules.pop("r3_user_models", None)
    env["imported"].unlink(missing_ok=True)
    assert _run(["eval", "--model", "cifar_resnet8", "--weights", str(run / "model.pt"), *SYN]) == 0
    assert not env["imported"].exists() and not env["mark"].exists()


def test_bomb_is_refused_with_bounded_memory(env, tmp_path):
    """The 300 MB member is refused from its header: the process never holds it (peak RSS well below)."""
    import subprocess
    code = ("import resource, sys\nfrom resprobe.io.data import load_dataset, DataError\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\n"
            f"try:\n    load_dataset('imagefolder:{env['bomb']}')\nexcept DataError as e:\n    print('refused')\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, RESPROBE_CACHE=str(tmp_path)))
    before_mb, refused, peak_mb = r.stdout.split()
    assert refused == "refused" and int(peak_mb) - int(before_mb) < 100, r.stdout


def test_limits_hold_and_can_be_raised(env, tmp_path, monkeypatch):
    from resprobe.io.data import DataError, load_dataset
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path))
    for var, value in (("RESPROBE_MAX_MEMBER_BYTES", "10"), ("RESPROBE_MAX_MEMBERS", "3"),
                       ("RESPROBE_MAX_ARCHIVE_BYTES", "100"), ("RESPROBE_MAX_IMAGE_PIXELS", "63")):
        monkeypatch.setenv(var, value)
        with pytest.raises(DataError, match=var):
            load_dataset(f"imagefolder:{env['good']}")
        monkeypatch.delenv(var)
    assert len(load_dataset(f"imagefolder:{env['good']}")) == 4


def test_sixteen_bit_images_decode_as_their_eight_bit_copies(tmp_path, monkeypatch):
    from resprobe.io.data import load_dataset
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(3):
            a8 = rng.integers(0, 256, (16, 16), dtype=np.uint8)
            for bits, arr in ((8, a8), (16, a8.astype(np.uint16) * 257)):
                p = tmp_path / f"g{bits}" / c / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)
    assert Image.open(tmp_path / "g16" / "a" / "0.png").mode.startswith("I")
    d8, d16 = (load_dataset(f"imagefolder:{tmp_path / f'g{b}'}") for b in (8, 16))
    assert torch.equal(d8.images, d16.images) and torch.equal(d8.labels, d16.labels)


def test_safetensors_weights_give_the_same_network(env, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file
    save_file(torch.load(env["r8"]), tmp_path / "r8.safetensors")
    outs = []
    for w in (env["r8"], tmp_path / "r8.safetensors"):
        assert _run(["eval", "--model", "cifar_resnet8", "--weights", str(w), *SYN, "--json", "--quiet"]) == 0
        outs.append(capsys.readouterr().out.split('"model"')[0])
    assert outs[0] == outs[1]


def test_paths_summary_counts_the_networks_units_not_the_largest_k(tmp_path, capsys):
    """--k 0:3 on a 9-unit network: no range or 'fraction of all paths' is claimed (it needs every k)."""
    assert _run(["paths", "--model", "cifar_resnet20", "--random-init", *SYN, "--limit", "8", "--samples", "2",
                 "--k", "0:3", "--out", str(tmp_path / "p"), "--quiet", "--n-boot", "100"]) == 0
    out = capsys.readouterr().out
    assert "% of all paths" not in out and "need every k from 0 to n" in out
    assert "of 3 units" not in out


def test_probes_refuse_a_model_with_hooks():
    """Probes run a network's parts one by one: a user's hook would be skipped, so they refuse the model."""
    from resprobe import api
    from resprobe.study import Subject
    data = api.load_data("synthetic(n=16)")
    for where in ("layer2.0.conv1", "layer1.0", ""):
        m = build_model("cifar_resnet8", num_classes=4)
        h = m.get_submodule(where).register_forward_hook(lambda mod, i, o: o * 0)
        for probe in (api.identity.run, api.lesion.run, api.paths.run):
            with pytest.raises(UsageError, match="hooks"):
                probe([Subject("a", m)], data)
        h.remove()
        api.identity.run([Subject("a", m)], data, api.RunSpec(progress=False))   # without the hook: runs


def test_full_disk_while_writing_a_figure_is_one_line_and_leaves_no_half_file(tmp_path, capsys, monkeypatch):
    import matplotlib.figure
    real = matplotlib.figure.Figure.savefig

    def full(self, fname, *a, **k):
        if str(fname).endswith(".tmp" + str(os.getpid())) and k.get("format") == "svg":
            with open(fname, "w") as f:
                f.write("<svg")        # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(fname))
        return real(self, fname, *a, **k)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    out = tmp_path / "out"
    code = _run(["lesion", *R8, *SYN, "--out", str(out), "--quiet", "--n-boot", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "disk is full" in err[0], err
    assert not any(p.suffix == ".svg" for p in out.iterdir())                     # no truncated SVG
    assert not any(".tmp" in p.name for p in out.iterdir())
    assert (out / "lesion.csv").is_file()                                         # the results came first


def test_api_options_use_the_same_checks():
    from resprobe import api
    from resprobe.probes.gradcorr import LineOptions, SyntheticOptions
    from resprobe.training import Recipe
    for make in (lambda: api.RunSpec(seed=-1), lambda: api.RunSpec(n_boot=10 ** 8),
                 lambda: api.identity.IdentityOptions(threshold=float("inf")),
                 lambda: SyntheticOptions(beta=float("nan")), lambda: LineOptions(span=float("inf")),
                 lambda: Recipe(epochs=1, momentum=-5), lambda: Recipe(epochs=1, weight_decay=float("nan"))):
        with pytest.raises(UsageError):
            make()
    with pytest.raises(SpecError, match="--trust-code"):
        build_model("r3_no_such_module:make")


def test_every_options_field_refuses_values_of_the_wrong_type_or_range():
    """The API's options objects go through the same checks: a bad value is a UserError, never a TypeError
    (or an accepted NaN) deep inside a probe."""
    import dataclasses

    from resprobe.errors import UserError
    from resprobe.probes import amplify, gradcorr, identity, lesion, paths, prune
    classes = [lesion.LesionPlan, paths.PathsOptions, amplify.AmplifyOptions, prune.PruneOptions,
               gradcorr.SyntheticOptions, gradcorr.LineOptions, identity.IdentityOptions]
    bad = [-1, float("nan"), float("inf"), 10 ** 30, "abc", [1.5], [float("nan")], object()]
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == "units":
                continue   # unit names or indices: resolved (and refused) against the network
            for v in bad:
                try:
                    cls(**{f.name: v})
                except UserError:
                    continue
                pytest.fail(f"{cls.__name__}({f.name}={v!r}) was accepted")


def test_an_empty_cache_variable_means_the_default_cache(monkeypatch):
    from pathlib import Path

    from resprobe.io.data import cache_dir
    monkeypatch.setenv("RESPROBE_CACHE", "")
    assert cache_dir() == Path.home() / ".cache" / "resprobe"     # not the current folder
