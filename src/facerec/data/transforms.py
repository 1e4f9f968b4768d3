"""Batch-level transforms on uint8 tensors: one vectorised pass instead of per-sample Python."""

from __future__ import annotations

from typing import Sequence

import torch


def to_model_input(
    x: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    flip: bool = False,
    generator: torch.Generator | None = None,
    flip_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 (x - mean) / std, each image mirrored with probability 1/2 if
    `flip`, or exactly where `flip_mask` [B] (bool) is True."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
    if flip or flip_mask is not None:
        mask = flip_mask if flip_mask is not None else torch.rand(x.shape[0], generator=generator) < 0.5
        if mask.any():
            x = x.clone()
            x[mask] = x[mask].flip(-1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() - m) / s
