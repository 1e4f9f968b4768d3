"""Margins as pure functions of cosine logits: `forward(cosine [B, C], labels [B]) -> logits [B, C]`.

Only the target-class logit of each row changes; every logit is then scaled by `s`. Rows whose
label is -1 get no margin (and are ignored by the loss). Inputs are cast to fp32 and clamped to
[-1, 1] first.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facerec.registry import Registry

MARGINS: Registry[nn.Module] = Registry("margin")


def _target(cosine: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
    return rows, labels[rows]


class CombinedMargin(nn.Module):
    """Combined margin `s * (cos(m1 * theta + m2) - m3)` on the target class (insightface).

    m1 is SphereFace's multiplicative angular margin (Liu et al., CVPR 2017), m2 ArcFace's
    additive angular margin (Deng et al., CVPR 2019), m3 CosFace's additive cosine margin
    (Wang et al., CVPR 2018). Gradients flow through the margin (autograd, "exact" mode);
    theta is computed from a cosine clamped slightly inside [-1, 1] so acos stays finite.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos_t.clamp(-1 + 1e-7, 1 - 1e-7))
        return torch.cos(self.m1 * theta + self.m2) - self.m3

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        cosine = cosine.float().clamp(-1.0, 1.0)
        rows, cols = _target(cosine, labels)
        out = cosine.clone()
        out[rows, cols] = self.target_logit(cosine[rows, cols])
        return out * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}"


class ArcFace(CombinedMargin):
    """ArcFace (Deng et al., CVPR 2019): target logit cos(theta + m).

    Where theta + m > pi the function stops decreasing; there the target uses
    `cos(theta) - m * sin(m)` (insightface's fallback), unless `easy_margin` keeps the original
    cosine for theta > pi/2.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=1e-12))
        phi = cos_t * self.cos_m - sin_t * self.sin_m
        if self.easy_margin:
            return torch.where(cos_t > 0, phi, cos_t)
        return torch.where(cos_t > self.th, phi, cos_t - self.mm)


class CosFace(CombinedMargin):
    """CosFace / AM-Softmax (Wang et al., CVPR 2018): target logit cos(theta) - m."""

    def __init__(self, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        return cos_t - self.m3


MARGINS.register("arcface")(ArcFace)
MARGINS.register("cosface")(CosFace)
MARGINS.register("combined")(CombinedMargin)


def create_margin(name: str, **kwargs) -> nn.Module:
    """Build a margin by name (arcface, cosface, combined, ...)."""
    return MARGINS.create(name, **kwargs)


def list_margins(pattern: str = "*") -> list[str]:
    return MARGINS.list(pattern)
