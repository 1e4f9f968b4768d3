"""Write the synthetic identities as real data files: a RecordIO training set and a `.bin` pair set.

The training identities are `0..identities-1`; the verification identities are drawn from a
disjoint range (`VAL_OFFSET + ...`), so no verification identity is ever trained on. Files are
cached under a directory named by the generator version and parameters, reused when
complete (a `DONE` marker is written last), and generated in parallel worker processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from facerec.config import SyntheticConfig
from facerec.data import synthetic as syn

GENERATOR_VERSION = 1
VAL_OFFSET = 10_000_000


def spec_key(spec: SyntheticConfig) -> str:
    """Cache key of a synthetic set: the generator version and every parameter."""
    blob = json.dumps({"v": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    train_rec: Path
    train_idx: Path
    val_bin: Path


def _identity_chunk(args: tuple[int, int, int, int, int, int]) -> list[tuple[int, bytes]]:
    seed, start, stop, per_id, size, quality = args
    out = []
    for ident in range(start, stop):
        for img in syn.iter_identity_images(seed, ident, per_id, size):
            out.append((ident, syn.encode_jpeg(img, quality)))
    return out


def _pair_chunk(args: tuple[int, list, int, int]) -> list[bytes]:
    seed, pairs, size, quality = args
    out = []
    for (a, ia), (b, ib), _ in pairs:
        out.append(syn.encode_jpeg(syn.render_image(seed, a, ia, size), quality))
        out.append(syn.encode_jpeg(syn.render_image(seed, b, ib, size), quality))
    return out


def _parallel(fn: Callable, jobs: list, workers: int) -> Iterator:
    if workers <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, jobs)


def build_synthetic(
    cache_dir: str | Path, spec: SyntheticConfig, workers: int | None = None, log: Callable[[str], None] | None = None
) -> SyntheticPaths:
    """Generate (or reuse) `train.rec/.idx` and `val.bin` for `spec` under `cache_dir`."""
    from facerec.data.bins import write_bin
    from facerec.data.recordio import write_face_rec

    root = Path(cache_dir) / f"synthetic-{spec_key(spec)}"
    paths = SyntheticPaths(root, root / "train.rec", root / "train.idx", root / "val.bin")
    if (root / "DONE").is_file() and all(p.is_file() for p in (paths.train_rec, paths.train_idx, paths.val_bin)):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    workers = workers or min(8, os.cpu_count() or 1)
    say = log or (lambda s: None)
    n_img = spec.identities * spec.images_per_identity
    say(f"generating {n_img} training images ({spec.image_size}x{spec.image_size}) of {spec.identities} "
        f"synthetic identities into {root} ...")
    step = max(1, min(25, spec.identities // (4 * workers) or 1))
    jobs = [(spec.seed, s, min(s + step, spec.identities), spec.images_per_identity, spec.image_size, spec.jpeg_quality)
            for s in range(0, spec.identities, step)]

    def samples() -> Iterator[tuple[int, bytes]]:
        for chunk in _parallel(_identity_chunk, jobs, workers):
            yield from chunk

    write_face_rec(paths.train_rec, samples(), idx_path=paths.train_idx)
    say(f"generating {spec.val_pairs} verification pairs of {spec.val_identities} held-out identities ...")
    pairs = syn.verification_pairs(spec.seed, range(VAL_OFFSET, VAL_OFFSET + spec.val_identities), spec.val_pairs)
    pstep = 100
    pjobs = [(spec.seed, pairs[i : i + pstep], spec.image_size, spec.jpeg_quality) for i in range(0, len(pairs), pstep)]
    images = [b for chunk in _parallel(_pair_chunk, pjobs, workers) for b in chunk]
    write_bin(paths.val_bin, images, [same for _, _, same in pairs])
    (root / "spec.json").write_text(json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, indent=2))
    (root / "DONE").write_text("ok\n")
    return paths
