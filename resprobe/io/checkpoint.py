"""Checkpoints: read a state dict from the usual containers, load it with one clear error on mismatch."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError
from .fetch import file_digest

__all__ = ["CheckpointError", "read_state_dict", "load_weights", "sha256_file"]

_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model (``missing``, ``unexpected``: keys;
    ``shapes``: ``(key, checkpoint shape, model shape)``)."""

    def __init__(self, message: str, hint: str | None = None, missing=(), unexpected=(), shapes=()):
        super().__init__(message, hint)
        self.missing, self.unexpected, self.shapes = list(missing), list(unexpected), list(shapes)


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _extract(obj, path) -> dict:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module):
                    return inner.state_dict()
                if _is_state_dict(inner):
                    return dict(inner)
        raise CheckpointError(
            f"{path}: no state dict found; top-level keys: {sorted(map(str, obj.keys()))[:20]} "
            "(expected a bare state dict or one under 'state_dict' or 'model')")
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _strip(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def check_file(path: Path) -> None:
    import stat
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}", "check the --weights path") from None
    except OSError as e:
        raise CheckpointError(f"cannot read the checkpoint {path} ({e.strerror or e})", "check the --weights path") from e
    if stat.S_ISDIR(st.st_mode):
        hint = next((f"pass the file inside it, e.g. {path / n}" for n in ("model.pt", "model.safetensors", "last.pt")
                     if (path / n).is_file()), "pass the checkpoint file, not its folder")
        raise CheckpointError(f"{path} is a folder, not a checkpoint file", hint)
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a device, pipe or socket)", "pass a checkpoint file")
    if st.st_size == 0:
        raise CheckpointError(f"{path}: the checkpoint file is empty")


_MAGIC = ((b"\x93NUMPY", "a NumPy .npy file"), (b"GGUF", "a GGUF file"), (b"\x89HDF", "an HDF5 (Keras) file"),
          (b"\x08\x01\x12", "an ONNX or protobuf file"), (b"\x1f\x8b", "a gzip file"), (b"{", "a JSON or text file"))


def _format(path: Path) -> str:
    """``torch`` (torch.save's zip, or a legacy pickle), ``safetensors``, or what the file looks like."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    return next((what for magic, what in _MAGIC if head.startswith(magic)),
                f"neither torch.save's zip format nor a pickle; it starts with {head[:8]!r}")


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise CheckpointError(f"{path} is a safetensors file and the safetensors package is not installed",
                              "pip install safetensors") from e
    try:
        sd = load_file(os.fspath(path), device="cpu")
    except Exception as e:  # noqa: BLE001 - a damaged file, in one line
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})", "the file is incomplete or "
                              "damaged: copy it again") from e
    if not sd:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors")
    return sd


def read_state_dict(path, trust: bool = False) -> dict:
    """Read a state dict (bare, or under ``state_dict``/``model``), ``module.`` prefixes stripped.

    Loads with ``weights_only=True``. A file that holds other Python objects (a pickle the safe loader
    refuses) is read by full unpickling — which can run arbitrary code — only with ``trust=True`` (CLI:
    ``--trust-checkpoint``). A corrupt, truncated or foreign file is reported as such.
    """
    path = Path(path)
    check_file(path)
    kind = _format(path)
    if kind == "safetensors":
        return _strip(_read_safetensors(path))
    if kind != "torch":
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({kind})",
                              "pass the .pt/.pth/.th file that torch.save wrote, or a .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure gets one of two clear messages
        text = str(e)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if "GLOBAL" not in text:
            lines = [ln for ln in lines if "weights_only" not in ln and "Weights only load failed" not in ln] or lines
            msg = next((ln for ln in lines if "Unsupported" in ln or "failed" in ln.lower()), lines[0] if lines else "")
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another "
                                  f"format: {type(e).__name__}: {msg[:200]})") from e
        msg = next(ln for ln in lines if "GLOBAL" in ln)
        if not trust:
            raise CheckpointError(
                f"{path}: the checkpoint holds Python objects that the safe loader refuses ({msg})",
                "full unpickling can execute arbitrary code; if you trust this file, pass --trust-checkpoint "
                "(API: trust=True)") from e
        warnings.warn(f"{path}: loading with full unpickling (weights_only=False) because trust was given",
                      stacklevel=2)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e2:  # noqa: BLE001
            raise CheckpointError(f"{path}: cannot read checkpoint ({type(e2).__name__}: {e2})") from e2
    return _strip(_extract(obj, path))


def load_weights(model: nn.Module, path, trust: bool = False) -> dict:
    """Load ``path`` into ``model`` strictly; returns provenance (path, sha256, n_tensors).

    A mismatch raises one :class:`CheckpointError` listing missing keys, unexpected keys and shape
    mismatches together.
    """
    sd = read_state_dict(path, trust=trust)
    own = model.state_dict()
    for k in own:  # checkpoints older than PyTorch 0.4.1 have no BN step counters (harmless: unused in eval)
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k].clone()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    kinds = [f"{k} ({str(sd[k].dtype).replace('torch.', '')})" for k in own
             if k in sd and own[k].is_floating_point() and not sd[k].is_floating_point()]
    if kinds and not (missing or unexpected or shapes):
        raise CheckpointError(f"{path}: {len(kinds)} weights that the model holds as floating point are stored as "
                              f"integers or booleans ({', '.join(kinds[:4])}{', ...' if len(kinds) > 4 else ''}); "
                              "casting them would give another network", "pass a floating-point checkpoint (a "
                              "quantised file needs dequantising first)")
    if missing or unexpected or shapes:
        def show(xs, n=12):
            return ", ".join(xs[:n]) + (f", ... ({len(xs)} in all)" if len(xs) > n else "") if xs else "none"
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: "
            f"missing keys ({len(missing)}): {show(missing)}; "
            f"unexpected keys ({len(unexpected)}): {show(unexpected)}; "
            f"shape mismatches ({len(shapes)}): {show(shapes, 6)}",
            "check that --model matches the checkpoint (depth, width, shortcut type)",
            missing=missing, unexpected=unexpected,
            shapes=[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                    if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)])
    model.load_state_dict(sd, strict=True)
    return {"weights": os.fspath(path), "weights_sha256": sha256_file(path), "n_tensors": len(sd)}
