"""Batch-level transforms on uint8 tensors: one vectorised pass instead of per-sample Python."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


_CHUNK = 8  # images per conversion block (8 x 112 x 112 x 3 floats = 1.2 MB, stays in L2)


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
    idx = None
    if flip or flip_mask is not None:
        mask = flip_mask if flip_mask is not None else torch.rand(x.shape[0], generator=generator) < 0.5
        idx = torch.nonzero(mask, as_tuple=True)[0]
        idx = idx if idx.numel() else None
    nhwc = x.permute(0, 2, 3, 1)
    channels_last = not x.is_contiguous() and nhwc.is_contiguous()
    if channels_last:  # work on [B, H, W, C]
        if idx is not None:  # numpy on 3-byte pixels: torch.flip over channels-last uint8 is very slow
            arr = nhwc.numpy().copy()
            pixels = arr.view(np.dtype("V3")).reshape(arr.shape[:3])
            pixels[idx.numpy()] = pixels[idx.numpy()][:, :, ::-1]
            nhwc = torch.from_numpy(arr)
        src, channel_dim = nhwc, 3
    else:
        if idx is not None:  # mirror the chosen images on uint8 (a quarter of the bytes of float)
            x = x.clone()
            x[idx] = x[idx].flip(-1)
        src, channel_dim = x, 1
    out = torch.empty(src.shape, dtype=torch.float32)
    for i in range(0, out.shape[0], _CHUNK):  # convert + normalise a few images at a time, in cache
        _normalise_(out[i : i + _CHUNK].copy_(src[i : i + _CHUNK]), mean, std, channel_dim)
    return out.permute(0, 3, 1, 2) if channels_last else out


def _normalise_(out: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int) -> torch.Tensor:
    """(out - mean) / std in place; plain scalars when all channels share them (the usual case,
    and much faster than a broadcast over a channels-last tensor)."""
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return out.sub_(float(mean[0])).div_(float(std[0]))
    shape = [1] * out.ndim
    shape[channel_dim] = 3
    m = torch.tensor(mean, dtype=torch.float32).view(shape)
    s = torch.tensor(std, dtype=torch.float32).view(shape)
    return out.sub_(m).div_(s)
