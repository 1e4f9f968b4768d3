"""Successors of ArcFace whose margin adapts during training: CurricularFace, AdaFace, MagFace.

Same interface as `facerec.heads.margins`: `forward(cosine [B, C], labels [B], norms [B]) ->
logits [B, C]`, cosines cast to fp32 and clamped to [-1, 1] first, rows labelled -1 untouched.
`norms` are the L2 norms of the embeddings *before* normalisation; the heads (`FullFC`,
`PartialFC`) pass them (for PartialFC, of the all-gathered global batch), so the batch
statistics of AdaFace are taken over the whole global batch. Running statistics are buffers
(saved in checkpoints) and are updated only in training mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from facerec.heads.margins import MARGINS, _interior, _target


def _prepare(cosine: torch.Tensor) -> torch.Tensor:
    return cosine.to(torch.promote_types(cosine.dtype, torch.float32)).clamp(-1.0, 1.0)


def _prepare_norms(norms: torch.Tensor) -> torch.Tensor:
    return norms.to(torch.promote_types(norms.dtype, torch.float32))


def _exact_value_smooth_grad(fn, t: torch.Tensor) -> torch.Tensor:
    """fn(t) with its exact value on [-1, 1], differentiated at t clamped to [-1 + eps, 1 - eps]
    so the gradient stays finite at theta = 0 and pi (where d acos / dt is infinite)."""
    with torch.no_grad():
        value = fn(t)
    smooth = fn(_interior(t))
    return smooth + (value - smooth).detach()


def _sin(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((1.0 - t * t).clamp(min=0.0))


@MARGINS.register("curricularface")
class CurricularFace(nn.Module):
    """CurricularFace (Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep
    Face Recognition", CVPR 2020).

    Target logit: cos(theta + m) where cos(theta) > cos(pi - m), else cos(theta) - m sin(m)
    (as ArcFace). A negative logit cos(theta_j) that exceeds the row's target logit (a hard
    example) becomes cos(theta_j) * (t + cos(theta_j)), where t is an exponential moving average
    of the mean target cosine (`t <- momentum * mean + (1 - momentum) * t`, updated in training
    mode before it is used, as the paper's algorithm); early in training t ~ 0 down-weights hard
    negatives, later they are emphasised. The gradient flows through the modulation (t is a
    constant). Everything is finally scaled by `s`.

    The hard-negative test needs each row's target cosine, so with Partial FC across several
    ranks (where a row's target lives on one rank only) it is refused.
    """

    needs_global_target = True

    def __init__(self, s: float = 64.0, m: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__()
        self.s, self.m, self.momentum = float(s), float(m), float(momentum)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        self.register_buffer("t", torch.zeros(()))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        cosine = _prepare(cosine)
        rows, cols = _target(cosine, labels)
        target = cosine[rows, cols]
        phi = _exact_value_smooth_grad(lambda c: c * self.cos_m - _sin(c) * self.sin_m, target)
        final_target = torch.where(target > self.th, phi, target - self.mm)
        if self.training and rows.numel() > 0:
            with torch.no_grad():
                self.t.mul_(1.0 - self.momentum).add_(self.momentum * target.detach().mean().to(self.t.dtype))
        t = self.t.to(cosine.dtype)
        out = cosine.clone()
        sub = cosine[rows]
        hard = sub > phi.detach().unsqueeze(1)
        out[rows] = torch.where(hard, sub * (t + sub), sub)
        out = out.index_put((rows, cols), final_target)
        return out * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, momentum={self.momentum}"


@MARGINS.register("adaface")
class AdaFace(nn.Module):
    """AdaFace (Kim, Jain, Liu, "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022).

    The feature norm is a proxy of image quality. With `z = clip(h * (||f|| - mu) / (sigma + eps),
    -1, 1)` (mu, sigma: moving averages of the batch's norm mean and std, momentum `t_alpha`), the
    target logit is `cos(clip(theta - m z, 0, pi)) - (m + m z)`: high-quality samples get an
    ArcFace-like angular margin, low-quality ones a CosFace-like additive one. Norms are
    detached (they only set the margin) and clipped to [0.001, 100]. Needs `norms`.
    """

    def __init__(self, s: float = 64.0, m: float = 0.4, h: float = 0.333, t_alpha: float = 0.01) -> None:
        super().__init__()
        self.s, self.m, self.h, self.t_alpha = float(s), float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise ValueError("AdaFace needs the embedding norms: call margin(cosine, labels, norms)")
        cosine = _prepare(cosine)
        rows, cols = _target(cosine, labels)
        norms = _prepare_norms(norms.detach()).view(-1).clamp(0.001, 100.0)
        if self.training and norms.numel() > 1:
            with torch.no_grad():
                a = self.t_alpha
                self.batch_mean.mul_(1 - a).add_(a * norms.mean())
                self.batch_std.mul_(1 - a).add_(a * norms.std())
        scaler = ((norms - self.batch_mean) / (self.batch_std + 1e-3) * self.h).clamp(-1.0, 1.0)
        z = scaler[rows].to(cosine.dtype)
        target = cosine[rows, cols]
        angular = _exact_value_smooth_grad(lambda c: torch.cos((torch.acos(c) - self.m * z).clamp(0.0, math.pi)), target)
        new = angular - (self.m + self.m * z)
        return cosine.index_put((rows, cols), new) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


@MARGINS.register("magface")
class MagFace(nn.Module):
    """MagFace (Meng et al., "MagFace: A Universal Representation for Face Recognition and
    Quality Assessment", CVPR 2021).

    The angular margin grows linearly with the feature magnitude a = clip(||f||, l_a, u_a):
    m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m, target logit cos(theta + m(a)) (ArcFace's
    fallback where theta + m(a) > pi). The magnitude regulariser g(a) = a / u_a^2 + 1 / a, weighted
    by `lambda_g`, is returned by `extra_loss(norms)`, which the heads add to the loss; the
    gradient flows into the norms there (and through the margin here).
    """

    def __init__(self, s: float = 64.0, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45,
                 u_m: float = 0.8, lambda_g: float = 35.0, m: float | None = None) -> None:
        super().__init__()
        self.s, self.l_a, self.u_a, self.l_m, self.u_m = float(s), float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    def margin_of(self, norms: torch.Tensor) -> torch.Tensor:
        a = _prepare_norms(norms).clamp(self.l_a, self.u_a)
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def extra_loss(self, norms: torch.Tensor) -> torch.Tensor:
        a = _prepare_norms(norms).clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a).mean()

    def forward(self, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
        if norms is None:
            raise ValueError("MagFace needs the embedding norms: call margin(cosine, labels, norms)")
        cosine = _prepare(cosine)
        rows, cols = _target(cosine, labels)
        m = self.margin_of(norms.view(-1))[rows].to(cosine.dtype)
        target = cosine[rows, cols]
        phi = _exact_value_smooth_grad(lambda c: c * torch.cos(m) - _sin(c) * torch.sin(m), target)
        th = torch.cos(math.pi - m)
        new = torch.where(target > th, phi, target - torch.sin(math.pi - m) * m)
        return cosine.index_put((rows, cols), new) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, lambda_g={self.lambda_g}"
