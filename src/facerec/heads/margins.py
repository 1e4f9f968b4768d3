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


GRADIENT_MODES = ("exact", "straight_through")
_EPS = 1e-6


def _interior(t: torch.Tensor) -> torch.Tensor:
    """`t` clamped to [-1 + 1e-6, 1 - 1e-6] with the identity as gradient (a plain clamp would
    zero the gradient of cosines at exactly +-1, common in bf16/fp16)."""
    return t + (t.clamp(-1.0 + _EPS, 1.0 - _EPS) - t).detach()


class CombinedMargin(nn.Module):
    """Combined margin `s * (cos(m1 * theta + m2) - m3)` on the target class (insightface).

    m1 is SphereFace's multiplicative angular margin (Liu et al., CVPR 2017), m2 ArcFace's
    additive angular margin (Deng et al., CVPR 2019), m3 CosFace's additive cosine margin
    (Wang et al., CVPR 2018). The forward value is the formula itself, also where
    m1 * theta + m2 > pi (as insightface's `CombinedMarginLoss`).

    Gradient modes:
        "exact": autograd through the margin function; theta is taken from a cosine clamped
            to [-1 + 1e-6, 1 - 1e-6] for the gradient only (the derivative there), so it stays
            finite at theta = 0, pi.
        "straight_through": insightface's — the margin shifts the target logit in the forward
            pass and the backward pass treats it as the identity.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 gradient: str = "exact") -> None:
        super().__init__()
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {GRADIENT_MODES}, got {gradient!r}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.gradient = gradient

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        """The margin function of the target cosine (input already in [-1, 1])."""
        return torch.cos(self.m1 * torch.acos(cos_t) + self.m2) - self.m3

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        # at least fp32 (float64 stays float64, for references and gradcheck)
        cosine = cosine.to(torch.promote_types(cosine.dtype, torch.float32)).clamp(-1.0, 1.0)
        rows, cols = _target(cosine, labels)
        t = cosine[rows, cols]
        with torch.no_grad():
            value = self.target_logit(t)
        if self.gradient == "straight_through":
            new = t + (value - t).detach()
        else:
            smooth = self.target_logit(_interior(t))
            new = smooth + (value - smooth).detach()
        out = cosine.index_put((rows, cols), new)
        return out * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, gradient={self.gradient}"


class ArcFace(CombinedMargin):
    """ArcFace (Deng et al., CVPR 2019): target logit cos(theta + m).

    Where theta + m > pi, cos(theta + m) would increase again; there the target is
    `cos(theta) - m * sin(m)` instead (insightface's `ArcFace` class and the seed), or with
    `easy_margin` the margin is applied only where cos(theta) > 0.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, easy_margin: bool = False, gradient: str = "exact") -> None:
        super().__init__(s=s, m1=1.0, m2=m, m3=0.0, gradient=gradient)
        self.easy_margin = easy_margin
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        sin_t = torch.sqrt((1.0 - cos_t * cos_t).clamp(min=0.0))
        phi = cos_t * self.cos_m - sin_t * self.sin_m
        if self.easy_margin:
            return torch.where(cos_t > 0, phi, cos_t)
        return torch.where(cos_t > self.th, phi, cos_t - self.mm)


class CosFace(CombinedMargin):
    """CosFace / AM-Softmax (Wang et al., CVPR 2018): target logit cos(theta) - m."""

    def __init__(self, s: float = 64.0, m: float = 0.35, gradient: str = "exact") -> None:
        super().__init__(s=s, m1=1.0, m2=0.0, m3=m, gradient=gradient)

    def target_logit(self, cos_t: torch.Tensor) -> torch.Tensor:
        return cos_t - self.m3


class SphereFace(CombinedMargin):
    """SphereFace's multiplicative angular margin (Liu et al., CVPR 2017): cos(m * theta),
    as insightface's combined margin applies it (no piecewise monotone extension)."""

    def __init__(self, s: float = 64.0, m: float = 1.35, gradient: str = "exact") -> None:
        super().__init__(s=s, m1=m, m2=0.0, m3=0.0, gradient=gradient)


MARGINS.register("arcface")(ArcFace)
MARGINS.register("cosface")(CosFace)
MARGINS.register("combined")(CombinedMargin)
MARGINS.register("sphereface")(SphereFace)


def create_margin(name: str, **kwargs) -> nn.Module:
    """Build a margin by name (arcface, cosface, combined, ...)."""
    return MARGINS.create(name, **kwargs)


def list_margins(pattern: str = "*") -> list[str]:
    return MARGINS.list(pattern)
