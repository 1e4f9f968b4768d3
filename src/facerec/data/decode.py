"""Image decoding with an explicit colour order: simplejpeg (libjpeg-turbo) when installed, else Pillow."""

from __future__ import annotations

import functools
import io

import numpy as np

from facerec.errors import DataError


@functools.cache
def _simplejpeg():
    try:
        import simplejpeg  # type: ignore

        return simplejpeg
    except ImportError:
        return None


def decode_image(data: bytes, color: str = "RGB", where: str = "image") -> np.ndarray:
    """Decode JPEG/PNG/... bytes to an HxWx3 uint8 array in `color` order ("RGB" or "BGR")."""
    if color not in ("RGB", "BGR"):
        raise ValueError(f"color must be 'RGB' or 'BGR', got {color!r}")
    sj = _simplejpeg() if data[:2] == b"\xff\xd8" else None
    if sj is not None:
        try:
            return sj.decode_jpeg(data, colorspace=color)
        except Exception:
            pass  # fall back to Pillow, which also reports the error properly
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode image ({exc.__class__.__name__}: {exc})") from None
    return arr[..., ::-1].copy() if color == "BGR" else arr


def decode_into(data: bytes, out: np.ndarray, color: str = "RGB", where: str = "image") -> None:
    """Decode into the preallocated `out` [H, W, 3] uint8 (a row of a batch array): no per-image
    allocation or copy with the fast decoder. An image of another size is a DataError."""
    sj = _simplejpeg() if data[:2] == b"\xff\xd8" else None
    if sj is not None:
        try:  # the decoder says the image's shape; a larger image does not fit and raises
            if sj.decode_jpeg(data, colorspace=color, buffer=out).shape == out.shape:
                return
        except Exception:
            pass  # fall through: Pillow decodes or reports the problem
    img = decode_image(data, color, where)
    if img.shape != out.shape:
        raise DataError(f"{where}: image is {img.shape[1]}x{img.shape[0]}, the batch holds "
                        f"{out.shape[1]}x{out.shape[0]} (a data set must hold one image size)")
    out[...] = img
