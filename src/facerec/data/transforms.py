"""Batch-level transforms on uint8 tensors: one vectorised pass instead of per-sample Python."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

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
    if channels_last and x.device.type == "cpu":  # work on [B, H, W, C]
        if idx is not None:  # numpy on 3-byte pixels: torch.flip over channels-last uint8 is very slow
            arr = nhwc.numpy().copy()
            pixels = arr.view(np.dtype("V3")).reshape(arr.shape[:3])
            pixels[idx.numpy()] = pixels[idx.numpy()][:, :, ::-1]
            nhwc = torch.from_numpy(arr)
        src, channel_dim = nhwc, 3
    else:
        channels_last = False
        if idx is not None:  # mirror the chosen images on uint8 (a quarter of the bytes of float)
            x = x.clone()
            idx = idx.to(x.device)
            x[idx] = x[idx].flip(-1)
        src, channel_dim = x, 1
    out = torch.empty(src.shape, dtype=torch.float32, device=src.device)
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
    m = torch.tensor(mean, dtype=torch.float32, device=out.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=out.device).view(shape)
    return out.sub_(m).div_(s)


@dataclass(frozen=True)
class InputFormat:
    """What the model takes, applied per image while it is in cache: decode in `color` order,
    keep `columns` (lo, hi) of each row (a 112x112 ArcFace crop for a 112x96 SphereFace-contract
    model), then (x - mean) / std as float32. Equal, bit for bit, to `fit_to_contract` +
    `to_model_input` on the whole batch."""

    color: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    columns: tuple[int, int] | None = None

    @classmethod
    def for_model(cls, pre, height: int, width: int) -> "InputFormat | None":
        """The format for a `Preprocess` contract and stored images of `height` x `width`; None
        when the contract needs a resize (that path stays on whole batches)."""
        columns = pre.crop_columns(height, width)
        if columns is None:
            return None
        return cls(pre.color, tuple(pre.mean), tuple(pre.std), None if columns == (0, width) else columns)

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        lo, hi = self.columns if self.columns is not None else (0, width)
        return height, hi - lo, 3


class PixelConverter:
    """uint8 [H, W, 3] images -> mirrored and normalised float32 rows of a batch, one image at a
    time. With OpenCV: `cv2.flip` and a 256-entry lookup table per channel (one pass, and the
    table holds exactly the values `(x - mean) / std` computes); without it, torch ops."""

    def __init__(self, fmt: InputFormat) -> None:
        self.fmt = fmt
        self._cv2 = _opencv()
        values = torch.arange(256, dtype=torch.float32).view(256, 1).expand(256, 3).contiguous()
        table = _normalise_(values, fmt.mean, fmt.std, channel_dim=1).numpy()
        uniform = len(set(fmt.mean)) == 1 and len(set(fmt.std)) == 1
        self._lut = np.ascontiguousarray(table[:, :1] if uniform else table).reshape(256, 1, -1)
        self._scratch: np.ndarray | None = None

    def mirror(self, img: np.ndarray) -> np.ndarray:
        """The image mirrored left-right (into a reused buffer: valid until the next call)."""
        if self._scratch is None or self._scratch.shape != img.shape:
            self._scratch = np.empty_like(img)
        return mirror_image(img, self._scratch)

    def convert(self, img: np.ndarray, out: np.ndarray) -> None:
        """Normalise uint8 `img` [H, W, 3] (after the column crop) into float32 `out`."""
        if self.fmt.columns is not None:
            img = img[:, self.fmt.columns[0] : self.fmt.columns[1]]
        if self._cv2 is not None:
            self._cv2.LUT(img if img.flags.c_contiguous else np.ascontiguousarray(img), self._lut, dst=out)
        else:
            _normalise_(torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(img))),
                        self.fmt.mean, self.fmt.std, channel_dim=2)


def mirror_image(img: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] `img` mirrored left-right into `out` (a new array if None; not `img`
    itself): `cv2.flip` when OpenCV is installed, else numpy on 3-byte pixels (much faster than
    per-byte strides)."""
    out = np.empty_like(img) if out is None else out
    cv2 = _opencv()
    if cv2 is not None:
        cv2.flip(img, 1, dst=out)
    else:
        out.view(np.dtype("V3"))[..., 0] = img.view(np.dtype("V3"))[:, ::-1, 0]
    return out


def _opencv():
    try:
        import cv2  # type: ignore[import-not-found]

        return cv2
    except ImportError:
        return None


@contextlib.contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """OpenCV on one thread inside the block (restored after): its thread pool costs far more
    than it saves on 112x112 images (mirroring a batch of 128 took ~7 ms with it, 0.4 ms
    without, on 2 cores)."""
    cv2 = _opencv()
    if cv2 is None:
        yield
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)
