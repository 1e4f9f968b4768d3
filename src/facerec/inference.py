"""Using a trained embedder: embed images, compare two faces, search a gallery.

    embedder = Embedder.load("model.safetensors")          # or .pt, backbone.pth, .onnx
    result = embedder.embed(["a.jpg", "b.jpg"], landmarks="landmarks.tsv")
    embedder.compare("a.jpg", "b.jpg")                      # similarity + decision
    gallery = embedder.index_gallery("people/", cache="people.npz")
    embedder.search("probe.jpg", gallery, top=5)

Images are aligned to the model's template with 5-point landmarks when given; an image already
at the model's input size is taken as an aligned crop; anything else is centre-cropped with a
warning (unaligned faces lose accuracy). Unreadable images are reported by path and skipped.
Embeddings are L2-normalised, so dot products are cosine similarities.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from facerec.contract import Preprocess, Threshold
from facerec.data.folder import DECODABLE_SUFFIXES as IMAGE_SUFFIXES
from facerec.data.folder import find_images
from facerec.errors import DataError, FacerecError, not_a_file_reason


def load_model(path: str | Path, arch: str | None = None) -> nn.Module:
    """A facerec checkpoint, safetensors weights, arcface_torch / seed checkpoint, or `.onnx` file."""
    if Path(path).suffix == ".onnx":
        from facerec.export.onnx import OnnxEmbedder

        if not Path(path).is_file():
            raise DataError(f"model {str(path)!r} {not_a_file_reason(path, '.onnx model file')}")
        return OnnxEmbedder(path)
    from facerec.models import load_checkpoint

    return load_checkpoint(path, arch=arch)


class Landmarks:
    """5-point landmarks by image path, from a TSV (`facerec.data.align.read_landmarks`), matched by
    the longest trailing part of the path (`.../Name/Name_0001.jpg` finds `Name/Name_0001.jpg`)."""

    def __init__(self, table: dict[str, np.ndarray | None]) -> None:
        self.table = {k.replace("\\", "/"): v for k, v in table.items()}

    @classmethod
    def read(cls, path: str | Path) -> "Landmarks":
        from facerec.data.align import read_landmarks

        return cls(read_landmarks(path))

    @classmethod
    def of(cls, landmarks: "str | Path | Landmarks | None") -> "Landmarks | None":
        """A `Landmarks` from a TSV path, or the given one (or None) unchanged."""
        return cls.read(landmarks) if isinstance(landmarks, (str, Path)) else landmarks

    def digest(self) -> str:
        items = sorted((k, None if v is None else v.tolist()) for k, v in self.table.items())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:8]

    def lookup(self, path: str | Path) -> tuple[bool, np.ndarray | None]:
        """(listed, points): listed is False when the file is not in the table at all."""
        parts = Path(path).as_posix().split("/")
        for i in range(len(parts)):
            key = "/".join(parts[i:])
            if key in self.table:
                return True, self.table[key]
        return False, None


@dataclass
class EmbedResult:
    embeddings: np.ndarray  # [M, D] float32, L2-normalised, one row per entry of `paths`
    paths: list[str]
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    alignment: dict[str, int] = field(default_factory=dict)  # how many: landmarks / as_is / center_crop


@dataclass
class Comparison:
    similarity: float
    same: bool | None  # None when no threshold is known
    threshold: Threshold | None

    def describe(self) -> str:
        if self.threshold is None:
            return (f"cosine similarity {self.similarity:.4f}; no decision: the model has no stored threshold "
                    f"(fit one with `facerec eval ... --store-threshold OUT`, or pass --threshold)")
        verdict = "same person" if self.same else "different people"
        return f"cosine similarity {self.similarity:.4f} -> {verdict} (threshold {self.threshold.describe()})"


@dataclass
class Match:
    rank: int
    identity: str
    score: float  # best cosine similarity over the identity's gallery images
    path: str  # the gallery image that scored it


@dataclass
class Gallery:
    embeddings: np.ndarray  # [N, D] float32, L2-normalised
    identities: list[str]
    paths: list[str]
    root: str = ""


def list_images(root: str | Path) -> list[Path]:
    """Image files under `root` (recursively, sorted)."""
    return find_images(root, "gallery")


def identity_of(path: Path, root: Path) -> str:
    """The first folder below the gallery root, or the file name's stem for files at the root."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


class Embedder:
    """Embeds faces with a model and its preprocessing contract (Python API of `facerec embed`,
    `compare` and `search`).

    Args:
        model: a module built/loaded by facerec (with `preprocess`), or a path (`load_model`).
        flip: "sum" (embedding + embedding of the mirror image, insightface) or "none"; default
            the flip the model's stored threshold was fitted with, else "sum".
        threshold: overrides the model's stored threshold (a cosine value or a `Threshold`).
    """

    def __init__(self, model: nn.Module | str | Path, flip: str | None = None, batch_size: int = 32,
                 device: str = "cpu", threshold: float | Threshold | None = None, arch: str | None = None) -> None:
        self.source = str(model) if isinstance(model, (str, Path)) else None
        self.model = load_model(model, arch) if isinstance(model, (str, Path)) else model
        if not hasattr(self.model, "preprocess"):
            raise FacerecError("the model has no preprocessing contract: build it with facerec.models.create_model "
                               "or load it with facerec.models.load_checkpoint")
        self.model.eval()
        self.preprocess: Preprocess = self.model.preprocess
        if isinstance(threshold, (int, float)):
            threshold = Threshold(float(threshold), "given", "command line")
        self.threshold: Threshold | None = threshold if threshold is not None else getattr(self.model, "threshold", None)
        self.flip = flip or (self.threshold.flip if self.threshold and self.threshold.flip in ("none", "sum") else "sum")
        if self.flip not in ("none", "sum"):
            raise ValueError(f"flip must be 'none' or 'sum', got {self.flip!r}")
        self.batch_size, self.device = batch_size, device

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> "Embedder":
        return cls(path, **kwargs)

    # -- images -----------------------------------------------------------------------------
    def prepare(self, image: str | Path | np.ndarray, landmarks: Landmarks | None = None) -> tuple[np.ndarray, str]:
        """An RGB uint8 crop at the model's input size, and how it was obtained."""
        from facerec.data.align import align_face, center_crop
        from facerec.data.decode import decode_image

        pre = self.preprocess
        if isinstance(image, np.ndarray):
            img, where, points = image, "array", None
        else:
            where = str(image)
            try:
                data = Path(image).read_bytes()
            except OSError as exc:
                raise DataError(f"{where}: cannot read ({exc.strerror or exc})") from None
            img = decode_image(data, "RGB", where)
            points = landmarks.lookup(image)[1] if landmarks is not None else None
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"{where}: expected an HxWx3 uint8 RGB image, got {img.dtype} {img.shape}")
        h, w = pre.input_size
        if points is not None:
            return align_face(img, points, pre.template, (h, w)), "landmarks"
        if pre.crop_columns(*img.shape[:2]) is not None:
            return img, "as_is"
        return center_crop(img, (h, w)), "center_crop"

    @torch.no_grad()
    def _embed_batch(self, crops: np.ndarray) -> np.ndarray:
        from facerec.eval.embeddings import extract_embeddings

        e = extract_embeddings(self.model, crops, self.preprocess, flip=self.flip, batch_size=self.batch_size,
                               device=self.device, progress=False)
        return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def embed(self, images: Sequence[str | Path | np.ndarray], landmarks: str | Path | Landmarks | None = None,
              progress: bool = False) -> EmbedResult:
        """Embeddings of the readable images; the others are listed in `failed` with the reason."""
        lm = Landmarks.of(landmarks)
        ok_paths, failed, counts, chunks = [], [], {"landmarks": 0, "as_is": 0, "center_crop": 0}, []
        batch: list[np.ndarray] = []
        items = list(images)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(items), desc="embedding", unit="img")
        for i, item in enumerate(items):
            name = str(item) if not isinstance(item, np.ndarray) else f"<array {i}>"
            try:
                crop, how = self.prepare(item, lm)
            except FacerecError as exc:
                failed.append((name, str(exc)))
            else:
                counts[how] += 1
                batch.append(crop)
                ok_paths.append(name)
            if len(batch) == self.batch_size:
                chunks.append(self._embed_batch(np.stack(batch)))
                batch = []
            if bar is not None:
                bar.update(1)
        if batch:
            chunks.append(self._embed_batch(np.stack(batch)))
        if bar is not None:
            bar.close()
        if counts["center_crop"]:
            warnings.warn(f"{counts['center_crop']} of {len(ok_paths)} images were neither aligned crops of the "
                          f"model's input size {self.preprocess.input_size} nor had landmarks: centre-cropped "
                          f"(accuracy suffers; pass landmarks to align them)", UserWarning, stacklevel=2)
        dim = self.preprocess.embedding_size
        emb = np.concatenate(chunks) if chunks else np.zeros((0, dim), dtype=np.float32)
        return EmbedResult(emb, ok_paths, failed, counts)

    def _embed_one(self, image, landmarks) -> np.ndarray:
        r = self.embed([image], landmarks)
        if r.failed:
            raise DataError(r.failed[0][1])
        return r.embeddings[0]

    # -- operations -------------------------------------------------------------------------
    def compare(self, a, b, landmarks: str | Path | Landmarks | None = None) -> Comparison:
        """Cosine similarity of two faces and the decision at the model's threshold."""
        r = self.embed([a, b], landmarks)
        if r.failed:
            raise DataError(r.failed[0][1])
        sim = float(np.dot(r.embeddings[0], r.embeddings[1]))
        same = None if self.threshold is None else bool(sim >= self.threshold.cosine)
        return Comparison(sim, same, self.threshold)

    def fingerprint(self) -> str:
        """Identifies the model weights and embedding settings (for gallery caches)."""
        h = hashlib.sha256()
        if self.source and Path(self.source).is_file():
            with open(self.source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        else:
            for k, v in self.model.state_dict().items():
                h.update(k.encode())
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
        h.update(json.dumps([self.preprocess.to_dict(), self.flip]).encode())
        return h.hexdigest()[:16]

    def index_gallery(self, root: str | Path, landmarks: str | Path | Landmarks | None = None,
                      cache: str | Path | None = None, progress: bool = False) -> Gallery:
        """Embed every image under `root` (identity: its first folder). With `cache` (an .npz) the
        index is saved, and later calls re-embed only added or changed files."""
        root = Path(root)
        files = list_images(root)
        if not files:
            raise DataError(f"gallery {str(root)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
        lm = Landmarks.of(landmarks)
        stamp = {str(p.relative_to(root)): f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files}
        fp = self.fingerprint() + (f":{lm.digest()}" if lm else "")
        known: dict[str, np.ndarray] = {}
        if cache is not None and Path(cache).is_file():
            known = _read_cache(Path(cache), fp, stamp)
        todo = [p for p in files if str(p.relative_to(root)) not in known]
        if todo:
            r = self.embed(todo, lm, progress=progress)
            for path, e in zip(r.paths, r.embeddings):
                known[str(Path(path).relative_to(root))] = e
            for path, reason in r.failed:
                warnings.warn(f"gallery image skipped: {reason}", UserWarning, stacklevel=2)
        rels = [str(p.relative_to(root)) for p in files if str(p.relative_to(root)) in known]
        if not rels:
            raise DataError(f"gallery {str(root)!r}: no readable images")
        gallery = Gallery(np.stack([known[r] for r in rels]), [identity_of(root / r, root) for r in rels],
                          [str(root / r) for r in rels], str(root))
        if cache is not None and todo:
            _write_cache(Path(cache), fp, rels, [stamp[r] for r in rels], gallery.embeddings)
        return gallery

    def search(self, probe, gallery: Gallery, top: int = 5, landmarks: str | Path | Landmarks | None = None,
               use_faiss: bool | None = None) -> list[Match]:
        """The `top` gallery identities most similar to the probe face (exact search; faiss's
        exact inner-product index when installed, same results)."""
        lm = Landmarks.of(landmarks)
        q = self._embed_one(probe, lm)
        scores = _inner_products(q[None], gallery.embeddings, use_faiss)[0]
        order = np.argsort(-scores, kind="stable")
        seen: dict[str, int] = {}
        for i in order:  # best image per identity, identities in order of their best score
            ident = gallery.identities[i]
            if ident not in seen:
                seen[ident] = int(i)
                if len(seen) == top:
                    break
        return [Match(r + 1, ident, float(scores[i]), gallery.paths[i]) for r, (ident, i) in enumerate(seen.items())]


def _inner_products(q: np.ndarray, base: np.ndarray, use_faiss: bool | None) -> np.ndarray:
    if use_faiss is not False:
        try:
            import faiss  # type: ignore[import-not-found]
        except ImportError:
            if use_faiss:
                raise FacerecError("faiss is not installed (pip install faiss-cpu)") from None
        else:
            index = faiss.IndexFlatIP(base.shape[1])
            index.add(np.ascontiguousarray(base, dtype=np.float32))
            d, i = index.search(np.ascontiguousarray(q, dtype=np.float32), base.shape[0])
            out = np.empty_like(d)
            np.put_along_axis(out, i, d, axis=1)
            return out
    return q.astype(np.float32) @ base.astype(np.float32).T


def _read_cache(path: Path, fingerprint: str, stamp: dict[str, str]) -> dict[str, np.ndarray]:
    """Cached embeddings still valid for this model and these files (by size and mtime)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                return {}
            rels, stamps, emb = z["paths"].tolist(), z["stamps"].tolist(), z["embeddings"]
    except (OSError, KeyError, ValueError) as exc:
        warnings.warn(f"gallery cache {path} unreadable ({exc}); rebuilding it", UserWarning, stacklevel=3)
        return {}
    return {r: e for r, s, e in zip(rels, stamps, emb) if stamp.get(r) == s}


def _write_cache(path: Path, fingerprint: str, rels: list[str], stamps: list[str], emb: np.ndarray) -> None:
    import io

    from facerec.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, fingerprint=np.array(fingerprint), paths=np.array(rels), stamps=np.array(stamps), embeddings=emb)
    atomic_write_bytes(path, buf.getvalue())


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded to their images (sorted)."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        out.extend(list_images(p) if p.is_dir() else [p])
    return out


__all__ = ["Embedder", "EmbedResult", "Comparison", "Match", "Gallery", "Landmarks", "load_model",
           "expand_inputs", "list_images"]
