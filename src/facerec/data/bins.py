"""insightface `.bin` verification sets: a pickle of `(list of image bytes, list of issame)`.

Pair k is images 2k and 2k+1. A `.bin` from the internet is untrusted: it is loaded with a
restricted unpickler that admits only the types these files contain (tuple, list, bytes, str,
bool, int, and the numpy bool arrays some copies hold); any other global in the pickle is
refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from facerec.errors import DataError
from facerec.io import atomic_open

# The only globals a .bin may reference: how numpy pickles an ndarray and its dtype.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, where: str) -> None:
        super().__init__(fh, encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in _NUMPY_GLOBALS:
            import importlib

            return getattr(importlib.import_module(module), name)
        raise DataError(
            f"{self.where}: refusing to load: the pickle references {module}.{name}, which a .bin "
            f"verification set never contains (only lists of image bytes and booleans); "
            f"the file may be malicious"
        )


def _as_bool_array(issame, where: str) -> np.ndarray:
    arr = np.asarray(issame)
    if arr.ndim != 1 or arr.dtype.kind not in "biu":
        raise DataError(f"{where}: issame must be a flat list of booleans, got {arr.dtype} {arr.shape}")
    return arr.astype(bool)


def read_bin(path: str | Path) -> tuple[list[bytes], np.ndarray]:
    """Load a `.bin` safely: (image bytes list of length 2N, issame bool array of length N)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"verification set {str(p)!r} does not exist")
    with open(p, "rb") as fh:
        try:
            obj = _RestrictedUnpickler(fh, str(p)).load()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{p}: not a readable .bin verification set ({exc.__class__.__name__}: {exc})") from None
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataError(f"{p}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = obj
    images = [bytes(b) if isinstance(b, (bytes, bytearray)) else b for b in images]
    for i, b in enumerate(images):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8:
            images[i] = b.tobytes()
        elif not isinstance(b, bytes):
            raise DataError(f"{p}: image {i} is a {type(b).__name__}, expected encoded image bytes")
    flags = _as_bool_array(issame, str(p))
    if len(images) != 2 * len(flags):
        raise DataError(f"{p}: {len(images)} images for {len(flags)} pairs; a .bin holds 2 images per pair")
    return images, flags


def write_bin(path: str | Path, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a `.bin` as insightface does (pickle protocol 4), atomically."""
    flags = [bool(x) for x in issame]
    if len(images) != 2 * len(flags):
        raise DataError(f"{path}: {len(images)} images for {len(flags)} pairs; need 2 images per pair")
    buf = io.BytesIO()
    pickle.dump(([bytes(b) for b in images], flags), buf, protocol=4)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())
