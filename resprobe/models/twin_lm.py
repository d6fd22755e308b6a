"""A small pre-LN decoder-only language model and its plain twin (``hf-config:resprobe_twin(...)``).

The residual model is GPT-2's layout: learned token and position embeddings, then per layer
``x + Attn(LN₁ x)`` and ``x + MLP(LN₂ x)``, a final LayerNorm and an untied unembedding. The plain twin
(``residual=False``) is the same modules, the same initialisation and the same recipe without the two
shortcuts: ``Attn(LN₁ x)`` then ``MLP(LN₂ x)``. Byte-level by default (a vocabulary of 256: any text
tokenises without a tokenizer), so the twins need no download and train on ``text:pydoc``.

It is a ``transformers`` model (registered as ``resprobe_twin`` with ``AutoConfig`` and
``AutoModelForCausalLM``), so everything that reads a causal LM reads it: the decoder anatomy
(:mod:`resprobe.adapters.transformers`) gives two units per layer — residual units, or plain units for
the twin — and ``--weights model.pt`` loads a trained state dict into ``hf-config:resprobe_twin(...)``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutput

__all__ = ["TwinLMConfig", "TwinLMForCausalLM", "register"]

Tensor = torch.Tensor


class TwinLMConfig(PretrainedConfig):
    model_type = "resprobe_twin"

    def __init__(self, vocab_size: int = 256, hidden_size: int = 128, num_hidden_layers: int = 4,
                 num_attention_heads: int = 4, intermediate_size: int = 512, max_position_embeddings: int = 256,
                 residual: bool = True, initializer_range: float = 0.02, layer_norm_eps: float = 1e-5,
                 tie_word_embeddings: bool = False, **kwargs):
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads "
                             f"{num_attention_heads}")
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.max_position_embeddings, self.residual = max_position_embeddings, bool(residual)
        self.initializer_range, self.layer_norm_eps = initializer_range, layer_norm_eps
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class TwinAttention(nn.Module):
    """Causal multi-head self-attention (scaled dot product); ``attention_mask``: the boolean
    ``(N, 1, T, T)`` mask the model builds once per batch (None: causal only)."""

    def __init__(self, cfg: TwinLMConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, h: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(h).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attention_mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        return self.proj(a.transpose(1, 2).reshape(n, t, d))


class TwinMLP(nn.Module):
    def __init__(self, cfg: TwinLMConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(h)))


class TwinLMLayer(GradientCheckpointingLayer):
    """``x + Attn(LN₁ x)`` then ``+ MLP(LN₂ ·)``; without the shortcuts when ``residual`` is False."""

    def __init__(self, cfg: TwinLMConfig):
        super().__init__()
        self.residual = cfg.residual
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = TwinAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = TwinMLP(cfg)

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
        a = self.attn(self.ln_1(hidden_states), attention_mask)
        h = hidden_states + a if self.residual else a
        m = self.mlp(self.ln_2(h))
        return h + m if self.residual else m


class TwinLMPreTrainedModel(PreTrainedModel):
    config_class = TwinLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["TwinLMLayer"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, (TwinAttention, TwinMLP)):   # GPT-2's scaled init of the output projections
            nn.init.normal_(module.proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))


class TwinLMModel(TwinLMPreTrainedModel):
    def __init__(self, cfg: TwinLMConfig):
        super().__init__(cfg)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(TwinLMLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, **kwargs) -> Tensor:
        n, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(f"{t} tokens exceed the model's {self.config.max_position_embeddings} positions")
        h = self.wte(input_ids) + self.wpe(torch.arange(t, device=input_ids.device))
        mask = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
            # padded keys are hidden; each query still sees itself, so no row is empty
            mask = (causal & attention_mask.bool()[:, None, None, :]) | torch.eye(t, dtype=torch.bool,
                                                                                  device=h.device)
        for layer in self.layers:
            h = layer(h, attention_mask=mask)
        return self.ln_f(h)


class TwinLMForCausalLM(TwinLMPreTrainedModel):
    def __init__(self, cfg: TwinLMConfig):
        super().__init__(cfg)
        self.model = TwinLMModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.wte

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                use_cache: Optional[bool] = None, **kwargs) -> CausalLMOutput:
        logits = self.lm_head(self.model(input_ids, attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)


_REGISTERED = False


def register() -> None:
    """Make ``resprobe_twin`` a family of ``AutoConfig`` and ``AutoModelForCausalLM`` (once)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AutoConfig, AutoModelForCausalLM
    AutoConfig.register("resprobe_twin", TwinLMConfig, exist_ok=True)
    AutoModelForCausalLM.register(TwinLMConfig, TwinLMForCausalLM, exist_ok=True)
    _REGISTERED = True
