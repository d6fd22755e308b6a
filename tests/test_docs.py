"""Docs that run: every command in the code blocks of README.md and experiments/README.md is executed as
written, with small overrides where it names real data or long work (``--limit``, ``--fast``, one epoch, few
samples, no warm-up; on text: 4 windows of 32 tokens (12 for a report), the first ``--k``, two lines of 16 points, and
training on 32 windows) and ``--out`` sent to a temporary folder; it must exit 0. Optional arguments are written in prose,
never in brackets inside a code block."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, need_shared

DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md"]
SKIP = ("pip ", "python -m pip", "python -m pytest", "pytest", "apt", "sudo ", "cd ", "export ")


def commands(path: Path) -> list[str]:
    """Shell commands in the file's ```bash blocks: continuation lines joined, comments dropped."""
    out, block, buf = [], False, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = (not block) and line.strip() in ("```bash", "```sh", "```console")
            continue
        if not block:
            continue
        text = line.split(" # ")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not text.strip() and not buf:
            continue
        buf += " " + text.strip()
        if buf.endswith("\\"):
            buf = buf[:-1]
            continue
        cmd = buf.strip()
        buf = ""
        if cmd and not cmd.startswith(SKIP):
            out.append(cmd)
    return out


def _set(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def adapt(cmd: str, tmp: Path) -> list[str]:
    """The command with the test's overrides (documented in the module docstring)."""
    argv = shlex.split(cmd)
    if "--out" in argv:
        i = argv.index("--out")
        argv[i + 1] = str(tmp / argv[i + 1].strip("/").replace("/", "_"))
    if argv[0] == "python" and argv[1].startswith("experiments/"):
        argv[0] = sys.executable
        if "degradation.py" in argv[1]:
            return [sys.executable, argv[1], "--fast", "--out", str(tmp / "degradation")]
        return argv[:2] + ["--fast", "--no-progress", "--out", str(tmp / Path(argv[1]).stem)]
    if argv[0] == "python" and argv[1].startswith(("benchmarks/", "tools/")):
        pytest.skip("benchmarks and tools are run by hand (their numbers are in the README)")
    if argv[0] in ("torchrun",):
        argv[0] = os.path.join(os.path.dirname(sys.executable), "torchrun")
        sub = argv.index("resprobe") + 1
    elif argv[0] == "resprobe":
        argv = [sys.executable, "-m", "resprobe"] + argv[1:]
        sub = 3
    else:
        return argv
    command = argv[sub]
    real = any(a.startswith("imagefolder:") or a == "cifar10" for a in argv)
    if real and command not in ("train",):
        _set(argv, "--limit", "64")
    if command == "train":
        _set(argv, "--epochs", "1")
        _set(argv, "--warmup-epochs", "0") if "--warmup-epochs" in argv else None
        _set(argv, "--limit", "256") if real else None
        if real:
            _set(argv, "--test-limit", "128")
    if command == "paths":
        _set(argv, "--samples", "2")
    if command == "amplify":
        _set(argv, "--power-iters", "2")
    if command == "lesion" and "--samples" in argv:
        _set(argv, "--samples", "2")
    text = any(a.startswith("text:") for a in argv)
    if text and command == "train":
        _set(argv, "--limit", "32")
        _set(argv, "--test-limit", "16")
    if text and command == "gradcorr":
        _set(argv, "--lines", "2")
        _set(argv, "--points", "16")
    if text and command in ("lesion", "eval", "identity", "amplify", "paths", "gradcorr", "report", "train"):
        _set(argv, "--limit", "12" if command == "report" else "4") if command != "train" else None
        _set(argv, "--seq-len", "32")
        if "--k" in argv and "prune-by-similarity" in argv:
            _set(argv, "--k", "1")
        elif "--k" in argv and command == "lesion":
            argv[argv.index("--k") + 1] = argv[argv.index("--k") + 1].split(",")[0]
    if command == "demo":
        _set(argv, "--epochs", "1")
    if command == "gradcorr" and "synthetic" in argv:
        _set(argv, "--seeds", "3")
        _set(argv, "--depths", "1,4")
    return argv


ALL = [(p.name, c) for p in DOCS for c in commands(p)]


def test_code_blocks_hold_no_bracketed_options_or_placeholders():
    for path in DOCS:
        for cmd in commands(path):
            assert not re.search(r"\[--", cmd) and " ... " not in f" {cmd} ", (path.name, cmd)
    assert len(ALL) >= 15  # the README shows the main commands


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory):
    """What a README command fetches by name (he2016:..., --data cifar10 --download), served from ../shared by a
    local server (tests/mirror.py): the commands run as a user's would, offline."""
    from conftest import MODELS, TEST_ARCHIVE
    from mirror import cifar10_python_archive, serve
    if not TEST_ARCHIVE.is_file():
        yield None
        return
    d = tmp_path_factory.mktemp("mirror")
    md5 = cifar10_python_archive(TEST_ARCHIVE, d / "cifar-10-python.tar.gz", limit=2000)
    with serve(d) as data_url, serve(MODELS) as weights_url:
        yield dict(RESPROBE_CIFAR10_URL=f"{data_url}/cifar-10-python.tar.gz", RESPROBE_CIFAR10_MD5=md5,
                   RESPROBE_WEIGHTS_URL=weights_url, TORCH_HOME=str(d / "torch"))


@pytest.mark.slow
@pytest.mark.parametrize("doc,cmd", ALL, ids=[f"{d}:{c[:60]}" for d, c in ALL])
def test_documented_command_runs(doc, cmd, tmp_path, mirrors):
    if "../shared" in cmd:
        need_shared(SHARED)
    fetched = "he2016:" in cmd or " cifar10 " in f"{cmd} "
    if fetched:
        need_shared(SHARED / "data", SHARED / "models")
    argv = adapt(cmd, tmp_path)
    env = dict(os.environ, MPLBACKEND="Agg", **(mirrors or {}) if fetched else {})
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, f"{cmd}\n-> {' '.join(argv)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
