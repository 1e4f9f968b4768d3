"""Torch datasets of face images with identity labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from facerec.data.decode import decode_image, decode_into
from facerec.data.shared_batches import SharedBatchPool
from facerec.data.transforms import InputFormat, PixelConverter, mirror_image, opencv_single_threaded
from facerec.data.recordio import RecordIOReader, label_and_payload, read_face_layout, record_label, unpack
from facerec.errors import DataError


class EncodedFaceDataset(Dataset):
    """Encoded face images (JPEG, PNG, ...) with identity labels `0..num_classes-1`, read a
    batch at a time. Subclasses say where sample `i`'s bytes are (`_record`).

    `__getitem__` returns (uint8 tensor [3, H, W] in `color` order, int label); normalisation and
    flips happen per batch (`read_batch`, `facerec.data.transforms`).
    """

    labels: np.ndarray
    num_classes: int

    def __init__(self, color: str = "RGB", on_bad: str = "error") -> None:
        """on_bad: an image that cannot be read or decoded, or has another size or a wrong label,
        is an error naming the file (and key) ("error"), or, in batches, left out and reported
        ("skip")."""
        if on_bad not in ("error", "skip"):
            raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        self.color = color
        self.on_bad = on_bad

    def __len__(self) -> int:
        return len(self.labels)

    def _record(self, i: int, view: bool = False) -> tuple[int, bytes | memoryview, str]:
        """(label, image bytes, where it is for messages) of sample `i`."""
        raise NotImplementedError

    def __getitems__(self, indices: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A whole batch at once (what DataLoader calls with a batch sampler): images decoded
        straight into one `[B, H, W, 3]` uint8 array (channels-last, no per-image copies),
        labels `[B]`, and the messages of records skipped under `on_bad="skip"`. An entry may be
        `(index, flip)`: the image is then mirrored here, in the worker. Use `collate_batch` as
        the DataLoader's `collate_fn`."""
        return self.read_batch(indices)

    def read_batch(self, indices: list, fmt: InputFormat | None = None,
                   pool: SharedBatchPool | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """`__getitems__`, optionally ready for the model: with `fmt` each image is decoded in
        `fmt.color`, mirrored, cropped and normalised while it is in cache, into one float32
        `[B, H, W, 3]` array. Inside a DataLoader worker the batch is in shared memory from the
        start, from `pool` if given (then `lease` or `release` it after use)."""
        with opencv_single_threaded():
            return self._read_batch(indices, fmt, pool)

    def _read_batch(self, indices: list, fmt: InputFormat | None,
                    pool: SharedBatchPool | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        items = [(int(i[0]), bool(i[1])) if isinstance(i, (tuple, list)) else (int(i), False) for i in indices]
        color = fmt.color if fmt is not None else self.color
        converter = PixelConverter(fmt) if fmt is not None else None
        out: np.ndarray | None = None
        storage: torch.Tensor | None = None
        scratch: np.ndarray | None = None
        labels = np.empty(len(items), dtype=np.int64)
        skipped: list[str] = []
        n = 0
        for i, flip in items:
            try:
                label, payload, where = self._record(i, view=True)
                if out is None:  # the first good image fixes the batch's size
                    scratch = decode_image(payload, color, where)
                    if not scratch.flags.writeable:  # Pillow's arrays may be read-only views
                        scratch = scratch.copy()
                    shape = scratch.shape if fmt is None else fmt.output_shape(*scratch.shape[:2])
                    storage, out = _batch_array((len(items), *shape), np.float32 if fmt is not None else np.uint8, pool)
                    img = scratch
                    if fmt is None:
                        out[0] = scratch
                        img = out[0]
                else:
                    img = out[n] if fmt is None else scratch
                    decode_into(payload, img, color, where)
            except DataError as exc:
                if self.on_bad != "skip":
                    raise
                skipped.append(str(exc))
                continue
            if converter is None:
                if flip:
                    img[...] = mirror_image(img)
            else:
                converter.convert(converter.mirror(img) if flip else img, out[n])
            labels[n] = label
            n += 1
        if out is None:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), skipped
        return storage[:n], torch.from_numpy(labels[:n]), skipped

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label, payload, where = self._record(i)
        img = decode_image(payload, self.color, where)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label


class RecordFaceDataset(EncodedFaceDataset):
    """Images and labels of an insightface `.rec` (or a plain im2rec file); labels are read once
    at construction, records through a memory map (a handle per DataLoader worker)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, color: str = "RGB",
                 on_bad: str = "error") -> None:
        super().__init__(color, on_bad)
        self.reader = RecordIOReader(rec_path, idx_path)
        layout = read_face_layout(self.reader)
        self.keys = layout.image_keys
        if len(self.keys) == 0:
            raise DataError(f"{rec_path}: no image records")
        if layout.identity_ranges:
            labels = np.empty(len(self.keys), dtype=np.int64)
            for c, (lo, hi) in enumerate(layout.identity_ranges):
                labels[lo - 1 : hi - 1] = c
            self.labels = labels
        else:
            self.labels = np.array([record_label(unpack(self.reader.read(int(k)))[0]) for k in self.keys], dtype=np.int64)
        if self.labels.min() < 0:
            raise DataError(f"{rec_path}: negative labels")
        self.num_classes = int(self.labels.max()) + 1

    def _record(self, i: int, view: bool = False) -> tuple[int, bytes | memoryview, str]:
        """(label, image bytes, "file (key k)" for messages) of sample `i`, its label checked;
        `view`: the bytes as a view into the mapped file, not a copy."""
        key = int(self.keys[i])
        where = f"{self.reader.rec_path} (key {key})"
        label, payload = label_and_payload(self.reader.read_view(key) if view else self.reader.read(key), where)
        if label != self.labels[i]:
            raise DataError(f"{where}: record label {label} disagrees with its identity record ({self.labels[i]})")
        return label, payload, where


class ImageListDataset(EncodedFaceDataset):
    """Face images read straight from files: an identity-per-folder tree (`root/<identity>/...`)
    or a list file (`path<TAB>label`, paths relative to `root`, by default the list's folder).
    Labels become 0..C-1 in the order of the listed labels (as `facerec data pack` numbers them).
    The images must be aligned crops of one size (`facerec data align` makes them)."""

    def __init__(self, source: str | Path, root: str | Path | None = None, color: str = "RGB",
                 on_bad: str = "error") -> None:
        from facerec.data.folder import read_list, scan_folder

        super().__init__(color, on_bad)
        src = Path(source)
        if src.is_dir():
            entries, self.root = scan_folder(src), src
        else:
            entries, self.root = read_list(src), Path(root) if root is not None else src.parent
        remap = {lab: c for c, lab in enumerate(sorted({e.label for e in entries}))}
        self.paths = [e.path for e in entries]
        self.labels = np.array([remap[e.label] for e in entries], dtype=np.int64)
        self.num_classes = len(remap)

    def _record(self, i: int, view: bool = False) -> tuple[int, bytes, str]:
        path = self.root / self.paths[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read image ({exc.strerror})") from None
        return int(self.labels[i]), data, str(path)


def _batch_array(shape: tuple[int, ...], dtype, pool: SharedBatchPool | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """An uninitialised batch as a tensor and a numpy view of it; inside a DataLoader worker its
    memory is shared from the start (what default collation does), so sending it is free."""
    if get_worker_info() is not None:
        t = (pool or SharedBatchPool(size=0)).take(shape, dtype)
    else:
        t = torch.from_numpy(np.empty(shape, dtype))
    return t, t.numpy()


def collate_batch(batch):
    """`collate_fn` for datasets with `__getitems__`: the batch is already assembled."""
    return batch
