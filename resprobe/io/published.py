"""Published checkpoints by name: ``--weights he2016:resnet56`` (He et al.'s CIFAR ResNets as released in
akamaster/pytorch_resnet_cifar10) and ``--weights zoo:cifar_resnet20`` (the networks this project trained,
in ``zoo/``). Each entry records its source URL, its sha256, the model spec and input normalization it
needs, and the test error it must give.

A download goes once into torch's hub cache (``$TORCH_HOME/hub/checkpoints``, as
``torch.hub.load_state_dict_from_url`` uses), through a temporary file that is renamed only after its
hash is checked; a partial or corrupt file is deleted and reported, and a cached file is checked against
its hash every time it is used. ``RESPROBE_WEIGHTS_URL`` replaces the base URL (a mirror, or a local
server in tests). Offline, one line names the URL, the cache folder and ``--weights PATH`` as the way out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .fetch import Failure, download, file_digest

__all__ = ["Published", "REGISTRY", "is_name", "resolve", "lookup", "cache_folder", "WeightsError"]

HE2016_BASE = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
HE2016_SOURCE = ("Y. Idelbayev, Proper ResNet implementation for CIFAR-10 in PyTorch (BSD-2-Clause), "
                 "github.com/akamaster/pytorch_resnet_cifar10; He et al. 2016, section 4.2")


class WeightsError(UserError, ValueError):
    """A checkpoint name that is unknown, cannot be fetched, or whose file fails its hash."""


@dataclass(frozen=True)
class Published:
    """One named checkpoint. ``sha256``: the whole hash where the project has checked the file, else the
    8-hex-digit prefix its file name carries (torch.hub's ``check_hash`` convention); ``error``: the published
    test error on the original CIFAR-10; ``jpeg_error``: what this project measured on the JPEG copy of the
    test set (None where not measured)."""

    name: str
    model: str
    file: str
    sha256: str
    normalize: str
    error: Optional[float]
    jpeg_error: Optional[float] = None
    source: str = HE2016_SOURCE
    local: bool = False          # True: a file of this repository (zoo/), nothing to download

    @property
    def url(self) -> str:
        if self.local:
            return ""
        return os.environ.get("RESPROBE_WEIGHTS_URL", HE2016_BASE).rstrip("/") + "/" + self.file

    def describe(self) -> dict:
        return dict(name=self.name, model=self.model, url=self.url or None, sha256=self.sha256,
                    normalize=self.normalize, error=self.error, jpeg_error=self.jpeg_error, source=self.source)


def _he(depth: int, file: str, sha: str, err: float, jpeg: Optional[float] = None) -> Published:
    return Published(f"he2016:resnet{depth}", f"cifar_resnet{depth}", file, sha, "imagenet", err, jpeg)


REGISTRY: dict[str, Published] = {p.name: p for p in (
    _he(20, "resnet20-12fca82f.th", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", 0.0827, 0.1897),
    _he(32, "resnet32-d509ac18.th", "d509ac18", 0.0737),
    _he(44, "resnet44-014dd654.th", "014dd654", 0.0690),
    _he(56, "resnet56-4bfd9763.th", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", 0.0661, 0.1680),
    _he(110, "resnet110-1d1ed7c2.th", "1d1ed7c2", 0.0632),
    _he(1202, "resnet1202-f3b1deed.th", "f3b1deed", 0.0618),
)}
ZOO = Path(__file__).resolve().parents[2] / "zoo"
ZOO_SOURCE = "trained by this project: zoo/<name>/config.json holds the exact command, metrics.csv the curve"


def _zoo() -> dict[str, Published]:
    """The zoo's checkpoints (``zoo/<name>/model.pt``), with the model and normalization their config records."""
    import json
    out = {}
    for cfg in sorted(ZOO.glob("*/config.json")) if ZOO.is_dir() else ():
        try:
            c = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        if (cfg.parent / "model.pt").is_file() and isinstance(c, dict) and "model" in c:
            name = f"zoo:{cfg.parent.name}"
            out[name] = Published(name, str(c["model"]), str(cfg.parent / "model.pt"), "", str(c.get("normalize",
                                  "imagenet")), None, None, ZOO_SOURCE, local=True)
    return out


def entries() -> dict[str, Published]:
    return {**REGISTRY, **_zoo()}


def is_name(text) -> bool:
    """Whether ``--weights`` names a registry entry (``he2016:...``, ``zoo:...``) rather than a file."""
    return isinstance(text, str) and text.split(":", 1)[0] in ("he2016", "zoo") and ":" in text


def lookup(name: str) -> Published:
    known = entries()
    if name not in known:
        import difflib
        close = difflib.get_close_matches(name, list(known), n=3)
        raise WeightsError(f"no published checkpoint named {name!r}",
                           f"did you mean {', '.join(close)}?" if close else "resprobe weights lists them")
    return known[name]


def cache_folder() -> Path:
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def _matches(path: Path, sha: str) -> bool:
    return file_digest(path).startswith(sha.lower())


def resolve(name: str, download: bool = True) -> tuple[Path, Published]:
    """The local file of the checkpoint ``name`` (downloaded once, hash checked) and its entry."""
    p = lookup(name)
    if p.local:
        path = Path(p.file)
        if not path.is_file():
            raise WeightsError(f"{name}: {path} is missing", "the zoo's files come with a clone of the repository")
        return path, p
    path = cache_folder() / p.file
    if path.is_file():
        if _matches(path, p.sha256):
            return path, p
        path.unlink(missing_ok=True)   # a damaged copy: fetched again below
        if not download:
            raise WeightsError(f"{name}: the cached file {path} failed its sha256 check and was deleted",
                               "run again to download it afresh")
    if not download:
        raise WeightsError(f"{name} is not in the cache ({path})", "allow the download, or pass --weights PATH")
    _fetch(p, path)
    return path, p


def _fetch(p: Published, path: Path) -> None:
    download(p.url, path, p.sha256, "sha256", Failure(p.name, f"connect to the network, or fetch {p.file} yourself "
                                                       "and pass --weights PATH", WeightsError))
