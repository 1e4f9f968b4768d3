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

from facerec.errors import DataError, not_a_file_reason
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
        raise DataError(f"verification set {str(p)!r} {not_a_file_reason(p, '.bin verification file')}")
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


# ---------------------------------------------------------------------------------------------
# A non-pickle verification-set format: numpy .npz loaded with allow_pickle=False.


def write_pairs_npz(path: str | Path, images: Sequence[bytes], issame: Sequence[bool],
                    folds: Sequence[int] | None = None) -> None:
    """Store pairs as `.npz` arrays (concatenated image bytes + offsets, issame, optional folds)."""
    flags = np.asarray([bool(x) for x in issame])
    if len(images) != 2 * len(flags):
        raise DataError(f"{path}: {len(images)} images for {len(flags)} pairs; need 2 images per pair")
    lengths = np.array([len(b) for b in images], dtype=np.int64)
    arrays = {
        "data": np.frombuffer(b"".join(bytes(b) for b in images), dtype=np.uint8),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "issame": flags,
    }
    if folds is not None:
        f = np.asarray(folds, dtype=np.int64)
        if f.shape != flags.shape:
            raise DataError(f"{path}: {f.size} fold ids for {flags.size} pairs")
        arrays["folds"] = f
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())


def read_pairs_npz(path: str | Path) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
    """Load a `.npz` pair set (never unpickles): (images, issame, folds or None)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"verification set {str(p)!r} {not_a_file_reason(p, '.npz verification file')}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data, offsets, issame = z["data"], z["offsets"], z["issame"].astype(bool)
            folds = z["folds"] if "folds" in z.files else None
    except (ValueError, KeyError, OSError) as exc:
        raise DataError(f"{p}: not a facerec .npz pair set ({exc.__class__.__name__}: {exc})") from None
    if offsets.size != 2 * issame.size + 1 or offsets[-1] != data.size:
        raise DataError(f"{p}: offsets do not match the data ({offsets.size - 1} images, {issame.size} pairs)")
    raw = data.tobytes()
    images = [raw[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)]
    return images, issame, folds


def read_pairs(path: str | Path) -> tuple[list[bytes], np.ndarray, np.ndarray | None]:
    """A verification set by suffix: `.bin` (insightface pickle, contiguous folds) or `.npz`."""
    if str(path).endswith(".npz"):
        return read_pairs_npz(path)
    images, issame = read_bin(path)
    return images, issame, None


def convert_bin_to_npz(src: str | Path, dst: str | Path) -> int:
    """Convert an insightface `.bin` to the non-pickle `.npz` format; returns the number of pairs."""
    images, issame = read_bin(src)
    write_pairs_npz(dst, images, issame)
    return int(issame.size)
