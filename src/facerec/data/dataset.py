"""Torch datasets of face images with identity labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facerec.data.decode import decode_image
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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        key = int(self.keys[i])
        where = f"{self.reader.rec_path} (key {key})"
        header, payload = unpack(self.reader.read(key), where)
        label = record_label(header)
        if label != self.labels[i]:
            raise DataError(f"{where}: record label {label} disagrees with its identity record ({self.labels[i]})")
        img = decode_image(payload, self.color, where)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), label
