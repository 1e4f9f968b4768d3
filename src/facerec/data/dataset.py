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

    def __init__(self, rec_path: str | Path, idx_path: str | Path | None = None, color: str = "RGB") -> None:
        self.reader = RecordIOReader(rec_path, idx_path)
        self.color = color
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

    def __getitems__(self, indices: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once (what DataLoader calls with a batch sampler): images decoded
        straight into one `[B, H, W, 3]` uint8 array (channels-last, no per-image copies) and
        labels `[B]`. An entry may be `(index, flip)`: the image is then mirrored here, in the
        worker, on its own row (cheap while it is in cache). Use `collate_batch` as the
        DataLoader's `collate_fn`."""
        items = [(int(i[0]), bool(i[1])) if isinstance(i, (tuple, list)) else (int(i), False) for i in indices]
        if not items:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        first = self[items[0][0]][0]
        out = np.empty((len(items), first.shape[1], first.shape[2], 3), dtype=np.uint8)
        out[0] = first.permute(1, 2, 0).numpy()
        labels = np.empty(len(items), dtype=np.int64)
        labels[0] = self.labels[items[0][0]]
        pixels = out.view(np.dtype("V3")).reshape(out.shape[:3])  # one 3-byte item per pixel: fast mirroring
        for j in range(len(items)):
            i, flip = items[j]
            if j == 0:
                if flip:
                    pixels[0] = pixels[0][:, ::-1]
                continue
            key = int(self.keys[i])
            where = f"{self.reader.rec_path} (key {key})"
            header, payload = unpack(self.reader.read(key), where)
            label = record_label(header)
            if label != self.labels[i]:
                raise DataError(f"{where}: record label {label} disagrees with its identity record ({self.labels[i]})")
            decode_into(payload, out[j], self.color, where)
            if flip:
                pixels[j] = pixels[j][:, ::-1]
            labels[j] = label
        return torch.from_numpy(out), torch.from_numpy(labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[i])
        where = f"{self.reader.rec_path} (key {key})"
        header, payload = unpack(self.reader.read(key), where)
        label = record_label(header)
        if label != self.labels[i]:
            raise DataError(f"{where}: record label {label} disagrees with its identity record ({self.labels[i]})")
        img = decode_image(payload, self.color, where)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label


def collate_batch(batch):
    """`collate_fn` for datasets with `__getitems__`: the batch is already assembled."""
    return batch
