"""Naive surgery on Hugging Face decoder layers, for the tests' independent references."""
from __future__ import annotations

import torch
import torch.nn as nn


class Zero(nn.Module):
    """An attention or MLP that contributes nothing (attention modules return a tuple)."""

    def __init__(self, attention: bool):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, *args, **kwargs):
        z = torch.zeros_like(hidden_states)
        return (z, None) if self.attention else z
