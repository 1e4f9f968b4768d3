"""Torch datasets of face images with identity labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facerec.data.decode import decode_image, decode_into
from facerec.data.recordio import RecordIOReader, read_face_layout, record_label, unpack
from facerec.errors import DataError


class RecordFaceDataset(Dataset):
    """Images and labels of an insightface `.rec` (or a plain im2rec file).

    `__getitem__` returns (uint8 tensor [3, H, W] in `color` order, int label); normalisation and
    flips happen per batch (`facerec.data.transforms`). Labels are read once at construction.
    """

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, color: str = "RGB",
                 on_bad: str = "error") -> None:
        """on_bad: a record that cannot be read or decoded, or has another size or a wrong label,
        is an error naming the file and key ("error"), or, in batches, left out and reported
        ("skip")."""
        if on_bad not in ("error", "skip"):
            raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
        self.reader = RecordIOReader(rec_path, idx_path)
        self.color = color
        self.on_bad = on_bad
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

    def __len__(self) -> int:
        return len(self.keys)

    def __getitems__(self, indices: list) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A whole batch at once (what DataLoader calls with a batch sampler): images decoded
        straight into one `[B, H, W, 3]` uint8 array (channels-last, no per-image copies),
        labels `[B]`, and the messages of records skipped under `on_bad="skip"`. An entry may be
        `(index, flip)`: the image is then mirrored here, in the worker, on its own row (cheap
        while it is in cache). Use `collate_batch` as the DataLoader's `collate_fn`."""
        items = [(int(i[0]), bool(i[1])) if isinstance(i, (tuple, list)) else (int(i), False) for i in indices]
        out: np.ndarray | None = None
        labels = np.empty(len(items), dtype=np.int64)
        skipped: list[str] = []
        n = 0
        for i, flip in items:
            try:
                label, payload, where = self._record(i)
                if out is None:  # the first good image fixes the batch's size
                    first = decode_image(payload, self.color, where)
                    out = np.empty((len(items), *first.shape), dtype=np.uint8)
                    out[0] = first
                else:
                    decode_into(payload, out[n], self.color, where)
            except DataError as exc:
                if self.on_bad != "skip":
                    raise
                skipped.append(str(exc))
                continue
            if flip:
                row = out[n].view(np.dtype("V3")).reshape(out.shape[1:3])  # 3-byte pixels: fast mirroring
                row[...] = row[:, ::-1]
            labels[n] = label
            n += 1
        if out is None:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), skipped
        return torch.from_numpy(out[:n]), torch.from_numpy(labels[:n]), skipped

    def _record(self, i: int) -> tuple[int, bytes, str]:
        """(label, image bytes, "file (key k)" for messages) of sample `i`, its label checked."""
        key = int(self.keys[i])
        where = f"{self.reader.rec_path} (key {key})"
        header, payload = unpack(self.reader.read(key), where)
        label = record_label(header)
        if label != self.labels[i]:
            raise DataError(f"{where}: record label {label} disagrees with its identity record ({self.labels[i]})")
        return label, payload, where

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        label, payload, where = self._record(i)
        img = decode_image(payload, self.color, where)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label


def collate_batch(batch):
    """`collate_fn` for datasets with `__getitems__`: the batch is already assembled."""
    return batch
