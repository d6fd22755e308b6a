"""Routed backward passes: one forward pass over a batch, then the gradient along any routing of the unraveled
network (each residual unit passes the gradient through its branch or its shortcut) — Veit et al.'s gradient per
path length. The routings of all paths sum to the ordinary gradient (tested for images and language models)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..anatomy import ResidualView

__all__ = ["RoutedBackward"]


class RoutedBackward:
    """One forward pass over a batch, then any number of routed backward passes.

    ``grad(route)``: ``route[i]`` True sends the gradient through unit i's residual branch, False through
    its shortcut (units without a shortcut always pass through their branch). Returns the gradient at the
    input of the first unit (and at the image if ``to_image``). Subclasses choose a unit's branch paths and the
    loss (:class:`resprobe.probes.lm_paths.TextRoutedBackward`); :meth:`routed` is the routing engine."""

    def __init__(self, view: ResidualView, x: torch.Tensor, y: torch.Tensor, to_image: bool = False):
        self.view = view
        self.to_image = to_image
        self.image = x.detach().requires_grad_(to_image)
        with torch.enable_grad():
            self.h0 = view.stem(self.image)
            self._forward(self.h0.detach().requires_grad_(True), y)

    def branches(self, u) -> list:
        """The callables a routing may send the gradient through in unit ``u`` (summed, they are its branch)."""
        return [u.branch]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="sum")

    def _forward(self, h: torch.Tensor, y: torch.Tensor) -> None:
        self.steps = []
        for u in self.view:
            fs = [fn(h) for fn in self.branches(u)]
            f = fs[0] if len(fs) == 1 else sum(fs[1:], fs[0])
            s = u.shortcut(h) if u.residual else None
            pre = f if s is None else s + f
            out = u.post(pre)
            self.steps.append((h, s, fs, pre, out))
            h = out.detach().requires_grad_(True)
        self.logits = self.view.head(h)
        (self.g_top,) = torch.autograd.grad(self.loss(self.logits, y), h)

    def routed(self, route: dict) -> torch.Tensor:
        """The gradient at the first unit's input along ``route``: unit index → the branch path it goes through
        (every other residual unit passes the gradient through its shortcut, a unit without one through its
        whole branch)."""
        g = self.g_top
        for i in range(len(self.steps) - 1, -1, -1):
            x, s, fs, pre, y = self.steps[i]
            (g_pre,) = torch.autograd.grad(y, pre, g, retain_graph=True)
            if s is None:
                g = sum(torch.autograd.grad(fs, x, [g_pre] * len(fs), retain_graph=True))
            elif i in route:
                (g,) = torch.autograd.grad(fs[route[i]], x, g_pre, retain_graph=True)
            elif self.view[i].shortcut_kind == "identity":
                g = g_pre
            else:
                (g,) = torch.autograd.grad(s, x, g_pre, retain_graph=True)
        return g

    def grad(self, route: Sequence[bool]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        g = self.routed({i: 0 for i, r in enumerate(route) if r})
        g_img = None
        if self.to_image:
            (g_img,) = torch.autograd.grad(self.h0, self.image, g, retain_graph=True)
        return g, g_img

    def true_grad(self) -> torch.Tensor:
        """The ordinary gradient at the first unit's input (all branches and shortcuts)."""
        g = self.g_top
        for i in range(len(self.steps) - 1, -1, -1):
            x, _, _, _, y = self.steps[i]
            (g,) = torch.autograd.grad(y, x, g, retain_graph=True)
        return g
