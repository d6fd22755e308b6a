"""Bad and careless inputs through the CLI entry point, table-driven: each gives exit status 2, one line on
stderr naming the problem (the key words checked), no traceback, and leaves the files already in --out
unchanged. Then the cases that must not fail: an unusable cache folder, --allow-nonfinite's strict JSON."""
from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest
import torch
from PIL import Image

from resprobe.cli import main
from resprobe.models import build_model


def _png(color, size=8):
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, files: dict, gz=True, dirs=()):
    with tarfile.open(path, "w:gz" if gz else "w") as tf:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _folder(root, files: dict, dirs=()):
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


CLASSES = {c: (40 * i, 255 - 40 * i, 100) for i, c in enumerate(["ant", "bee", "cat", "dog", "eel", "fox"])}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = {f"{split}/{c}/{i}.png": _png(col) for split in ("train", "test") for c, col in CLASSES.items()
            for i in range(4)}
    e = {"dir": d}
    e["good"] = _tar(d / "good.tar.gz", good)
    raw = e["good"].read_bytes()
    for name, cut in (("cut_early", 200), ("cut_middle", len(raw) // 2), ("cut_trailer", len(raw) - 5)):
        (d / f"{name}.tar.gz").write_bytes(raw[:cut])
        e[name] = d / f"{name}.tar.gz"
    plain = gzip.decompress(raw)
    (d / "cut.tar").write_bytes(plain[: len(plain) // 2])
    e["cut_tar"] = d / "cut.tar"
    e["stray"] = _folder(d / "stray", {"test/cat/0.png": _png((1, 1, 1)), "test/ant/0.png": _png((2, 2, 2)),
                                       "readme.png": _png((3, 3, 3))})
    e["flat"] = _folder(d / "flat", {"0.png": _png((1, 1, 1)), "1.png": _png((2, 2, 2))})
    e["empty_class"] = _folder(d / "empty", {"cat/0.png": _png((1, 1, 1)), "dog/0.png": _png((2, 2, 2))},
                               dirs=["ant"])
    e["mixed"] = _folder(d / "mixed", {"train/cat/0.png": _png((1, 1, 1)), "test/cat/0.png": _png((1, 1, 1)),
                                       "horse/0.png": _png((2, 2, 2))})
    e["six"] = _tar(d / "six.tar.gz", {k: v for k, v in good.items() if k.startswith("test/")})
    e["unsplit"] = _folder(d / "unsplit", {f"{c}/{i}.png": _png(col) for c, col in CLASSES.items() for i in range(3)})
    torch.manual_seed(0)
    torch.save(build_model("cifar_resnet8").state_dict(), d / "r8.pt")  # 10 classes
    e["r8"] = d / "r8.pt"
    for k in (4, 6):
        torch.save(build_model("cifar_resnet8", num_classes=k).state_dict(), d / f"r8_{k}.pt")
        e[f"r8_{k}"] = d / f"r8_{k}.pt"
    w = build_model("cifar_resnet8", num_classes=4).state_dict()
    bad = {k: v.clone() for k, v in w.items()}
    bad["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(bad, d / "nan.pt")
    e["nan"] = d / "nan.pt"
    (d / "random.pt").write_bytes(os.urandom(5000))
    e["random"] = d / "random.pt"
    import bz2
    import lzma
    import zipfile
    plain_tar = gzip.decompress(raw)
    for ext, comp in (("bz2", bz2.compress), ("xz", lzma.compress)):
        whole = comp(plain_tar)
        (d / f"good.tar.{ext}").write_bytes(whole)
        (d / f"cut.tar.{ext}").write_bytes(whole[: len(whole) * 2 // 3])
        e[f"good_{ext}"], e[f"cut_{ext}"] = d / f"good.tar.{ext}", d / f"cut.tar.{ext}"
    with zipfile.ZipFile(d / "good.zip", "w") as z:
        for name, data in good.items():
            z.writestr(name, data)
    zraw = (d / "good.zip").read_bytes()
    (d / "cut.zip").write_bytes(zraw[: len(zraw) // 2])
    e["good_zip"], e["cut_zip"] = d / "good.zip", d / "cut.zip"
    (d / "text.tar.gz").write_bytes(gzip.compress(b"not a tar archive " * 100))
    e["gz_text"] = d / "text.tar.gz"
    (d / "afile").write_text("x")
    e["afile"] = d / "afile"
    return e


SYN = ["--data", "synthetic(n=32)", "--normalize", "none"]
R8 = ["--model", "cifar_resnet8", "--random-init"]

# (name, argv (with {placeholders}), key words of the message)
CASES = [
    ("gzip cut early", ["eval", *R8, "--data", "imagefolder:{cut_early}"], ["truncated"]),
    ("gzip cut in the middle", ["eval", *R8, "--data", "imagefolder:{cut_middle}"], ["truncated"]),
    ("gzip cut in its trailer", ["eval", *R8, "--data", "imagefolder:{cut_trailer}"], ["truncated"]),
    ("tar cut mid-member", ["eval", *R8, "--data", "imagefolder:{cut_tar}"], ["truncated"]),
    ("stray image at the top", ["eval", *R8, "--data", "imagefolder:{stray}"], ["outside class folders"]),
    ("no class folders", ["eval", *R8, "--data", "imagefolder:{flat}"], ["outside class folders"]),
    ("empty class folder", ["eval", *R8, "--data", "imagefolder:{empty_class}"], ["without images", "ant"]),
    ("split and class folders mixed", ["lesion", *R8, "--data", "imagefolder:{mixed}", "--split", "test", "--out",
                                       "{out}"], ["split folders", "horse"]),
    ("missing split", ["eval", *R8, "--data", "imagefolder:{good}", "--split", "val"], ["no split 'val'", "test"]),
    ("bzip2 archive cut", ["eval", *R8, "--data", "imagefolder:{cut_bz2}"], ["truncated"]),
    ("xz archive cut", ["eval", *R8, "--data", "imagefolder:{cut_xz}"], ["truncated"]),
    ("zip archive cut", ["eval", *R8, "--data", "imagefolder:{cut_zip}"], ["truncated", "zip"]),
    ("gzip of something that is not a tar", ["eval", *R8, "--data", "imagefolder:{gz_text}"], ["not a tar archive"]),
    ("a path without imagefolder:", ["eval", *R8, "--data", "{good}"], ["imagefolder:"]),
    ("synthetic with a negative n", ["eval", *R8, "--data", "synthetic(n=-3)"], ["n must be", "1..10000000"]),
    ("synthetic with an unknown setting", ["eval", *R8, "--data", "synthetic(q=3)"], ["unknown setting q"]),
    ("more outputs than classes", ["eval", "--model", "cifar_resnet8(num_classes=10)", "--random-init", *SYN],
     ["10 outputs", "4 classes"]),
    ("weights and --random-init", ["eval", "--model", "cifar_resnet8", "--weights", "{r8_4}", "--random-init", *SYN],
     ["--random-init", "ignored"]),
    ("CKA subset not a number", ["identity", *R8, *SYN, "--cka-images", "abc", "--out", "{out}"],
     ["--cka-images", "'all'"]),
    ("range longer than the network", ["prune", *R8, *SYN, "--n", "99", "--out", "{out}"], ["--n 99", "3 units"]),
    ("no range keeps the shape", ["prune", *R8, *SYN, "--n", "2", "--out", "{out}"], ["--n 2", "keeps the shape"]),
    ("lines too long for memory", ["gradcorr", *R8, *SYN, "--points", "1000000000", "--out", "{out}"],
     ["--points", "GiB"]),
    ("empty --out", ["lesion", *R8, *SYN, "--out", ""], ["--out is empty"]),
    ("depth in the name and the arguments", ["info", "--model", "cifar_resnet8(depth=20)"], ["depth 8", "depth=20"]),
    ("a factory spec without a module", ["info", "--model", ":"], ["cannot read model spec"]),
    ("torchvision weights to download", ["info", "--model", "torchvision:resnet18(weights='DEFAULT')"],
     ["download", "--weights FILE"]),
    ("lesion mode unknown to the API", ["lesion", *R8, *SYN, "--mode", "bogus", "--out", "{out}"], ["--mode"]),
    ("class count differs from the network", ["eval", "--model", "cifar_resnet8", "--weights", "{r8}", "--data",
                                              "imagefolder:{six}"], ["10 outputs", "6 classes"]),
    ("training on the test images", ["train", "--model", "cifar_resnet8", "--data", "imagefolder:{unsplit}",
                                     "--epochs", "1", "--out", "{out}"], ["training and test images are the same"]),
    ("NaN weight", ["identity", "--model", "cifar_resnet8", "--weights", "{nan}", *SYN, "--out", "{out}"],
     ["layer2.0.conv1.weight", "NaN"]),
    ("two networks, one label", ["lesion", "--model", "cifar_resnet8", "--model", "cifar_resnet8", "--random-init",
                                 "--label", "a", "--label", "a", *SYN, "--out", "{out}"], ["share the label 'a'"]),
    ("same weights twice", ["lesion", "--model", "cifar_resnet8", "--weights", "{r8_4}", "--model", "cifar_resnet8",
                            "--weights", "{r8_4}", *SYN, "--out", "{out}"], ["share the label"]),
    ("--out is a file", ["lesion", *R8, *SYN, "--out", "{afile}"], ["is a file"]),
    ("--out cannot be created", ["lesion", *R8, *SYN, "--out", "{afile}/sub"], ["cannot write"]),
    ("training into an existing run", ["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs",
                                       "1", "--out", "{run}"], ["already holds a training run", "--resume"]),
    ("lines of 2 points", ["gradcorr", *R8, *SYN, "--points", "2", "--out", "{out}"], ["--points", "16"]),
    ("lines of 1 point", ["gradcorr", *R8, *SYN, "--points", "1", "--out", "{out}"], ["--points"]),
    ("one line", ["gradcorr", *R8, *SYN, "--lines", "1", "--out", "{out}"], ["--lines", "at least 2"]),
    ("path length beyond the network", ["paths", *R8, *SYN, "--k", "0:30", "--out", "{out}"], ["must lie in 0..3"]),
    ("share above 1", ["paths", *R8, *SYN, "--share", "1.5", "--out", "{out}"], ["--share", "between 0 and 1"]),
    ("k of 0 deletions", ["lesion", *R8, *SYN, "--mode", "random-k", "--k", "0", "--out", "{out}"], ["1..3"]),
    ("CKA subset below one minibatch", ["identity", *R8, *SYN, "--cka-images", "8", "--out", "{out}"],
     ["--cka-images", "minibatch"]),
    ("random bytes as weights", ["eval", "--model", "cifar_resnet8", "--weights", "{random}", *SYN],
     ["not a PyTorch checkpoint"]),
    ("random bytes, trusted", ["eval", "--model", "cifar_resnet8", "--weights", "{random}", "--trust-checkpoint",
                               *SYN], ["not a PyTorch checkpoint"]),
    ("batch size 0", ["lesion", *R8, *SYN, "--batch-size", "0", "--out", "{out}"], ["--batch-size", "positive"]),
    ("unknown device", ["eval", *R8, *SYN, "--device", "bogus"], ["unknown device 'bogus'"]),
    ("cuda without a GPU", ["eval", *R8, *SYN, "--device", "cuda"], ["CUDA"]),
    ("a factory that raises", ["eval", "--model", "torchvision:resnet18(widht=3)", "--random-init", *SYN],
     ["cannot build model", "widht"]),
    ("input size 0,0,0", ["info", "--model", "cifar_resnet8", "--input-size", "0,0,0"], ["--input-size", "positive"]),
    ("input size that does not fit", ["info", "--model", "cifar_resnet8", "--input-size", "4,32,32"],
     ["does not accept inputs of shape (4, 32, 32)"]),
    ("eps not a number", ["amplify", *R8, *SYN, "--eps", "abc", "--out", "{out}"], ["--eps", "abc"]),
    ("eps out of range", ["amplify", *R8, *SYN, "--eps", "0,2", "--out", "{out}"], ["--eps", "1)"]),
    ("no weights", ["lesion", "--model", "cifar_resnet8", *SYN, "--out", "{out}"], ["no --weights", "--random-init"]),
    ("standard-library factory", ["info", "--model", "os:system(command='echo hi')"], ["standard-library"]),
    ("builtin factory", ["info", "--model", "builtins:print"], ["standard-library"]),
    ("unknown spec", ["info", "--model", "cifar_resnet9000x"], ["unknown model spec"]),
    ("limit 0", ["eval", *R8, *SYN, "--limit", "0"], ["--limit", "positive"]),
    ("power iterations 0", ["amplify", *R8, *SYN, "--power-iters", "0", "--out", "{out}"], ["--power-iters"]),
    ("set mode without units", ["lesion", *R8, *SYN, "--mode", "set", "--out", "{out}"], ["needs the units"]),
    ("unknown unit", ["lesion", *R8, *SYN, "--mode", "set", "--units", "layer9.9", "--out", "{out}"],
     ["unknown unit or block 'layer9.9'", "layer1.0"]),
    ("non-residual model", ["info", "--model", "torchvision:vgg11"], ["no residual block", "Conv2d"]),
    ("weights of another depth", ["eval", "--model", "cifar_resnet20", "--weights", "{r8}", *SYN],
     ["missing keys", "--model"]),
]


def _fill(argv, paths):
    return [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(env, tmp_path, capsys, name, argv, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lesion.csv").write_text("precious,rows\n1,2\n")
    run = tmp_path / "run"
    if "{run}" in " ".join(argv):
        assert main(["train", "--model", "cifar_resnet8", "--data", "synthetic(n=32)", "--epochs", "1", "--out",
                     str(run), "--quiet"]) == 0
        capsys.readouterr()
    before = {p: p.read_bytes() for p in list(out.rglob("*")) + list(run.rglob("*")) if p.is_file()}
    code = _run(_fill(argv, dict(env, out=out, run=run)))
    err = capsys.readouterr().err
    assert code == 2, (name, err)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("W1128")]
    assert len(lines) == 1 and lines[0].startswith("resprobe: error:"), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (name, w, lines[0])
    after = {p: p.read_bytes() for p in before}
    assert after == before  # nothing already in --out (or the run folder) was touched


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return e.code


def test_concurrent_run_into_one_folder_is_refused(tmp_path, capsys):
    from filelock import FileLock
    out = tmp_path / "o"
    out.mkdir()
    with FileLock(str(out / ".resprobe.lock")):
        code = main(["lesion", *R8, *SYN, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "another resprobe run is writing to" in err and not (out / "lesion.csv").exists()


def test_unusable_cache_folder_warns_once_and_carries_on(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESPROBE_CACHE", str(env["afile"]))  # a file: no folder can be made there
    import resprobe.io.data as D
    monkeypatch.setattr(D, "_CACHE_WARNED", False)
    with pytest.warns(UserWarning, match="cannot write the decoded-image cache"):
        assert main(["eval", "--model", "cifar_resnet8", "--weights", str(env["r8_6"]), "--data",
                     f"imagefolder:{env['good']}", "--normalize", "none", "--limit", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 3


def test_truncated_archive_never_enters_the_cache(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESPROBE_CACHE", str(tmp_path / "cache"))
    for name in ("cut_early", "cut_middle", "cut_trailer"):
        assert _run(["eval", *R8, "--data", f"imagefolder:{env[name]}"]) == 2
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_allow_nonfinite_gives_strict_json(env, capsys):
    code = main(["eval", "--model", "cifar_resnet8", "--weights", str(env["nan"]), "--allow-nonfinite", *SYN,
                 "--json"])
    out = capsys.readouterr().out
    assert code == 0
    res = json.loads(out)  # strict JSON: NaN is written as null
    assert "NaN" not in out and res["loss"] is None


def test_rerun_with_other_settings_names_them(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["lesion", *R8, *SYN, "--mode", "random-k", "--k", "1", "--samples", "2", "--out", str(out),
                 "--quiet"]) == 0
    before = (out / "lesion.csv").read_bytes()
    code = main(["lesion", *R8, *SYN, "--mode", "random-k", "--k", "1", "--samples", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "samples: 2 then, 3 now" in err and (out / "lesion.csv").read_bytes() == before
    (out / "lesion.runs.json").unlink()  # the settings file gone: the rows still carry their run key
    code = main(["lesion", *R8, *SYN, "--mode", "random-k", "--k", "1", "--samples", "3", "--out", str(out)])
    assert code == 2 and "other settings" in capsys.readouterr().err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception):
        main(["info", "--model", "cifar_resnet9000x", "--debug"])


@pytest.mark.parametrize("kind", ["good_bz2", "good_xz", "good_zip"])
def test_other_archive_formats_read_like_the_tar_gz(env, kind):
    from resprobe.io.data import load_imagefolder
    ref = load_imagefolder(env["good"], "test", cache=False)
    got = load_imagefolder(env[kind], "test", cache=False)
    assert got.classes == ref.classes and torch.equal(got.images, ref.images) and torch.equal(got.labels, ref.labels)


def test_a_split_without_a_class_keeps_the_class_indices_of_the_others(tmp_path):
    from resprobe.io.data import load_imagefolder
    files = {f"{split}/{c}/{i}.png": _png(col) for split in ("train", "test") for c, col in CLASSES.items()
             for i in range(2) if not (split == "test" and c == "ant")}
    ds = load_imagefolder(_folder(tmp_path / "d", files), "test", cache=False)
    assert ds.classes == sorted(CLASSES)  # "ant" kept: every other class keeps its index
    assert ds.source["classes_absent"] == ["ant"]
    # the label of each image is its folder's index among all splits' classes, checked from the pixel colour
    colour_of = {tuple(col): c for c, col in CLASSES.items()}
    for img, lab in zip(ds.images, ds.labels):
        assert ds.classes[int(lab)] == colour_of[tuple(int(v) for v in img[:, 0, 0])]


@pytest.mark.parametrize("probe", ["identity", "prune"])
def test_a_rerun_with_other_settings_does_not_replace_the_results(tmp_path, capsys, probe):
    out = tmp_path / probe
    argv = [probe, *R8, *SYN, "--limit", "16", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert main(argv) == 0  # the same settings: the same files (random init seeded by --seed)
    again = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert again[f"{probe}.csv"] == first[f"{probe}.csv"]
    assert main(argv + ["--batch-size", "4"]) == 0  # the batch size is not a setting: results do not depend on it
    assert (out / f"{probe}.csv").read_bytes() == first[f"{probe}.csv"]
    capsys.readouterr()
    assert _run(argv + ["--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "seed: 0 then, 3 now" in err
    assert (out / f"{probe}.csv").read_bytes() == first[f"{probe}.csv"]
