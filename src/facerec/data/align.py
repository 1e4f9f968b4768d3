"""Five-point face alignment: a least-squares similarity transform onto a template, then a warp.

Templates (x, y) for (left eye, right eye, nose tip, left mouth corner, right mouth corner),
"left" being the image's left:
- "arcface": insightface's 112x112 template;
- "sphereface": the 112x96 template of SphereFace and the seed's lineage — the ArcFace one minus
  8 px in x, so the central 96 columns of an ArcFace crop are exactly a SphereFace crop.
Other output sizes scale the template (x by W/width, y by H/112).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerec.errors import DataError, not_a_file_reason

ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
SPHEREFACE_112x96 = ARCFACE_112 - np.array([8.0, 0.0])
_BASE = {"arcface": (ARCFACE_112, (112, 112)), "sphereface": (SPHEREFACE_112x96, (112, 96))}


def template_points(template: str = "arcface", size: tuple[int, int] | None = None) -> np.ndarray:
    """The 5 template points for an output of `size` = (H, W) (default: the template's own)."""
    if template not in _BASE:
        raise ValueError(f"unknown alignment template {template!r}; use 'arcface' or 'sphereface'")
    pts, (h0, w0) = _BASE[template]
    h, w = size or (h0, w0)
    return pts * np.array([w / w0, h / h0])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, shift) src -> dst.

    Umeyama's closed form ("Least-squares estimation of transformation parameters between two
    point patterns", TPAMI 1991), reflections excluded.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need matching [N, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    var_s = (s**2).sum() / len(src)
    scale = float((sig * np.diag(e)).sum() / var_s)
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Warp an HxWx3 uint8 image by the 2x3 `matrix` (source -> output) into `size` = (H, W),
    bilinear, black outside."""
    from PIL import Image

    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)  # Pillow maps output pixels back to the input
    h, w = size
    # Pillow samples at pixel centres (x + 0.5); shift so that integer coordinates map exactly.
    shift = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    unshift = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    m = shift @ inv @ unshift
    coeffs = tuple(m[0].tolist() + m[1].tolist())
    out = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)
    return np.asarray(out)


def align_face(
    image: np.ndarray, landmarks: np.ndarray, template: str = "arcface", size: tuple[int, int] | None = None
) -> np.ndarray:
    """Crop of `image` aligned so that its 5 `landmarks` land on the template (least squares)."""
    dst = template_points(template, size)
    out_size = size or _BASE[template][1]
    m = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), dst)
    return warp_affine(image, m, out_size)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fallback for faces without landmarks: the central square, resized to `size`."""
    from PIL import Image

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(image[top : top + side, left : left + side])
    th, tw = size
    return np.asarray(crop.resize((tw, th), Image.Resampling.BILINEAR))


def read_landmarks(path: str | Path) -> dict[str, np.ndarray | None]:
    """Read a landmarks TSV (`image  x1 y1 ... x5 y5`, `#` comments, `NA` for no face).

    Returns {image path as written: [5, 2] float array, or None where the detector found no face}.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"landmarks file {str(p)!r} {not_a_file_reason(p, 'landmarks TSV file')}")
    out: dict[str, np.ndarray | None] = {}
    with open(p, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 11:
                raise DataError(f"{p}:{lineno}: expected an image name and 10 coordinates, got {len(parts)} fields")
            name, vals = parts[0], parts[1:]
            if any(v.strip().upper() in ("NA", "NAN", "") for v in vals):
                out[name] = None
                continue
            try:
                out[name] = np.array([float(v) for v in vals], dtype=np.float64).reshape(5, 2)
            except ValueError:
                raise DataError(f"{p}:{lineno}: landmark coordinates must be numbers or NA") from None
    return out


def align_folder(
    root: str | Path, landmarks: str | Path, out: str | Path, template: str = "arcface",
    size: tuple[int, int] | None = None, missing: str = "skip", quality: int = 95,
    log=None,
) -> dict[str, int]:
    """Align every image under `root` (any folder structure) with the landmarks TSV (keys are
    paths relative to `root`) into the same tree under `out`, as JPEG (quality `quality`).

    missing: images without landmarks (NA or not listed): "skip" (counted, not written),
    "center" (centre crop, counted) or "error". Unreadable images are an error naming the file.
    Returns counts: aligned, center_cropped, skipped.
    """
    from facerec.data.decode import decode_image
    from facerec.data.synthetic import encode_jpeg

    if missing not in ("skip", "center", "error"):
        raise ValueError(f"missing must be skip, center or error, got {missing!r}")
    from facerec.data.folder import find_images

    root, out = Path(root), Path(out)
    files = find_images(root, "image root")
    table = read_landmarks(landmarks)
    out_size = size or _BASE[template][1]
    counts = {"aligned": 0, "center_cropped": 0, "skipped": 0}
    if not files:
        raise DataError(f"{root}: no images")
    for p in files:
        rel = p.relative_to(root).as_posix()
        lm = table.get(rel)
        if lm is None:
            if missing == "error":
                raise DataError(f"{p}: no landmarks in {landmarks} ({'NA' if rel in table else 'not listed'})")
            if missing == "skip":
                counts["skipped"] += 1
                continue
        img = decode_image(p.read_bytes(), "RGB", str(p))
        if lm is None:
            crop = center_crop(img, out_size)
            counts["center_cropped"] += 1
        else:
            crop = align_face(img, lm, template, out_size)
            counts["aligned"] += 1
        dst = (out / rel).with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(encode_jpeg(crop, quality))
    if log is not None:
        log(f"aligned {counts['aligned']} image(s) to the {template} template at {out_size[0]}x{out_size[1]} "
            f"into {out}; without landmarks: {counts['skipped']} skipped, {counts['center_cropped']} centre-cropped "
            f"(policy '{missing}')")
    return counts
