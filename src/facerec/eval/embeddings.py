"""Batched embedding extraction that follows the model's preprocessing contract, never a guess."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facerec.contract import Preprocess
from facerec.errors import DataError


def fit_to_contract(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Bring a uint8/float batch [B, 3, H, W] to `pre.input_size`.

    A 112x112 ArcFace-aligned crop given to a 112x96 SphereFace-contract model loses 8 columns
    on each side (the two templates differ by exactly 8 px in x); any other size mismatch is a
    bilinear (antialiased) resize.
    """
    h, w = pre.input_size
    H, W = x.shape[-2:]
    columns = pre.crop_columns(H, W)
    if columns == (0, W):
        return x
    if columns is not None:
        return x[..., columns[0] : columns[1]]
    dtype = x.dtype
    y = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else y


def _to_nchw_uint8(images) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(images)) if not torch.is_tensor(images) else images
    if t.ndim != 4:
        raise DataError(f"images must be a batch [N, H, W, 3] or [N, 3, H, W], got shape {tuple(t.shape)}")
    if t.shape[-1] == 3 and t.shape[1] != 3:
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] != 3:
        raise DataError(f"images must have 3 colour channels, got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    images,
    preprocess: Preprocess,
    flip: str = "sum",
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings [N, D] (or [N, 2D] for `flip="concat"`) of RGB uint8 images.

    Args:
        flip: "sum" (insightface: embedding of the image plus that of its mirror), "concat" (the
            seed's: the two side by side) or "none".
    """
    if flip not in ("sum", "concat", "none"):
        raise ValueError(f"flip must be 'sum', 'concat' or 'none', got {flip!r}")
    x_all = _to_nchw_uint8(images)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    was_training = model.training
    model.eval()
    out = []
    starts = range(0, x_all.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="embedding", unit="batch", leave=False)
    for i in starts:
        x = fit_to_contract(x_all[i : i + batch_size], preprocess).to(device)
        if preprocess.color == "BGR":
            x = x.flip(1)
        x = (x.float() - mean) / std
        e = model(x).float()
        if flip != "none":
            ef = model(x.flip(-1)).float()
            e = e + ef if flip == "sum" else torch.cat([e, ef], dim=1)
        out.append(e.cpu())
    model.train(was_training)
    emb = torch.cat(out).numpy()
    if not np.isfinite(emb).all():
        warnings.warn("the model produced NaN/Inf embeddings", RuntimeWarning, stacklevel=2)
    return emb
