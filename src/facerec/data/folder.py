"""Identity-per-folder trees, list files (`path<TAB>label`) and packing them into RecordIO.

    root/<identity>/.../*.jpg  ->  list file  ->  train.rec + train.idx + property

Labels are assigned in sorted order of the identity folder names (what the seed's
`generate_dataset_list.py` did); images anywhere below an identity folder belong to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from facerec.errors import DataError, not_a_directory_reason, not_a_file_reason

# the image files that listing, packing, alignment and inference pick up (Pillow decodes them all)
DECODABLE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp", ".tif", ".tiff")


def find_images(root: str | Path, what: str = "image folder") -> list[Path]:
    """Image files (`DECODABLE_SUFFIXES`) anywhere below `root`, sorted; `what` names the
    folder in the error when it is not a directory."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{what} {str(r)!r} is not a directory")
    return sorted(p for p in r.rglob("*") if p.suffix.lower() in DECODABLE_SUFFIXES and p.is_file())


@dataclass(frozen=True)
class ListEntry:
    path: str
    label: int


def scan_folder(root: str | Path) -> list[ListEntry]:
    """Entries for every image below `root/<identity>/`, paths relative to `root`."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"image folder {str(r)!r} {not_a_directory_reason(r, 'folder of identity folders')}")
    identities = sorted(p for p in r.iterdir() if p.is_dir())
    if not identities:
        records = sorted(r.glob("*.rec"))
        hint = f"; it holds {records[0].name}: give that file's path for a RecordIO set" if records else ""
        raise DataError(f"{r}: no identity folders (expected root/<identity>/<image files>){hint}")
    out = []
    for label, d in enumerate(identities):
        images = sorted(p for p in d.rglob("*") if p.suffix.lower() in DECODABLE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"{d}: identity folder without images")
        out += [ListEntry(p.relative_to(r).as_posix(), label) for p in images]
    return out


def write_list(entries: list[ListEntry], path: str | Path) -> None:
    from facerec.io import atomic_write_text

    atomic_write_text(path, "".join(f"{e.path}\t{e.label}\n" for e in entries))


def read_list(path: str | Path) -> list[ListEntry]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"list file {str(p)!r} {not_a_file_reason(p, 'path<TAB>label list file')}")
    out = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.rsplit("\t", 1)
        if len(parts) != 2:
            raise DataError(f"{p}:{lineno}: expected 'path<TAB>label', got {line!r}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataError(f"{p}:{lineno}: label {parts[1]!r} is not an integer") from None
        if label < 0:
            raise DataError(f"{p}:{lineno}: negative label {label}")
        out.append(ListEntry(parts[0], label))
    if not out:
        raise DataError(f"{p}: empty list file")
    return out


def pack_list(
    entries: list[ListEntry],
    root: str | Path,
    rec_path: str | Path,
    transform: Callable[[bytes, str], bytes] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Pack the listed images into an insightface RecordIO with identity records and `property`.

    Labels are made consecutive (0..C-1 in order of the original labels); `transform(bytes,
    path)` may re-encode each image (e.g. after alignment); by default the file bytes are stored
    unchanged.
    """
    from facerec.data.recordio import write_face_rec
    from facerec.io import atomic_write_text

    r = Path(root)
    ordered = sorted(entries, key=lambda e: (e.label, e.path))
    remap = {lab: i for i, lab in enumerate(sorted({e.label for e in ordered}))}

    def samples() -> Iterator[tuple[int, bytes]]:
        for e in ordered:
            p = r / e.path
            try:
                data = p.read_bytes()
            except OSError as exc:
                raise DataError(f"{p}: cannot read image listed in the list file ({exc.strerror})") from None
            yield remap[e.label], (transform(data, e.path) if transform else data)

    info = write_face_rec(rec_path, samples())
    from facerec.data.decode import decode_image
    from facerec.data.recordio import RecordIOReader, unpack

    first = unpack(RecordIOReader(rec_path).read(1))[1]
    h, w = decode_image(first, where=f"{rec_path} (key 1)").shape[:2]
    atomic_write_text(Path(rec_path).with_name("property"), f"{info['num_classes']},{h},{w}\n")
    if log:
        log(f"packed {info['num_images']} images of {info['num_classes']} identities into {rec_path}")
    return info


def export_rec(rec_path: str | Path, out_dir: str | Path) -> int:
    """Write every image of a face `.rec` to `out_dir/<label>/<key>.jpg`, bytes unchanged."""
    from facerec.data.dataset import RecordFaceDataset
    from facerec.data.recordio import unpack

    ds = RecordFaceDataset(rec_path)
    out = Path(out_dir)
    for i, key in enumerate(ds.keys):
        _, payload = unpack(ds.reader.read(int(key)))
        d = out / str(int(ds.labels[i]))
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{int(key):08d}.jpg").write_bytes(payload)
    return len(ds)
