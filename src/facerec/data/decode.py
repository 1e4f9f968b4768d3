"""Image decoding with an explicit colour order: simplejpeg (libjpeg-turbo) when installed, else Pillow."""

from __future__ import annotations

import io

import numpy as np

from facerec.errors import DataError


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
