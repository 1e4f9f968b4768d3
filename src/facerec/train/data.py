"""What the training loop reads: the training set, its batches in a resumable order, val sets.

The batch order is a pure function of (seed, epoch, rank): a resumed run skips the batches it
already trained on and sees exactly the batches an uninterrupted run would have seen. Random
horizontal flips are a seeded coin per (seed, epoch, sample index), for the same reason and so
that N ranks with batch B/N train on exactly the images one process with batch B sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facerec.config import Config
from facerec.contract import Preprocess
from facerec.data.dataset import collate_batch
from facerec.errors import DataError, not_a_file_reason


class EpochSampler:
    """Batches of indices for one rank: a seeded permutation per epoch, cut into global batches.

    Global batch `b` holds `batch_size * world_size` indices; rank `r` takes its `r`-th slice, so
    N ranks with batch B/N see the same samples per step as one rank with batch B. The last
    incomplete global batch is dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batches_per_epoch = num_samples // (batch_size * world_size)

    def batches(self, epoch: int, start_batch: int = 0) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_samples, generator=g)
        gb = self.batch_size * self.world_size
        out = []
        for b in range(start_batch, self.batches_per_epoch):
            lo = b * gb + self.rank * self.batch_size
            out.append(perm[lo : lo + self.batch_size].tolist())
        return out


@dataclass
class ValSet:
    """A decoded verification set: images [2N, H, W, 3] uint8 RGB, issame [N] bool."""

    name: str
    images: np.ndarray
    issame: np.ndarray


@dataclass
class TrainData:
    train: Dataset
    num_classes: int
    val_sets: dict[str, ValSet] = field(default_factory=dict)
    num_workers: int = 0
    seed: int = 0
    _epoch: int = 0
    _indices: torch.Tensor | None = None
    _flip_bits: tuple[int, torch.Tensor] | None = None
    _preflipped: bool = False
    skipped: list[str] = field(default_factory=list)  # messages of bad records left out (data.bad_records=skip)

    def loader(self, sampler: EpochSampler, epoch: int, start_batch: int = 0,
               preprocess: Preprocess | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels [B]) for batches `start_batch..` of `epoch`, mirrored by the
        epoch's coin. Each batch is the caller's to keep.

        Without `preprocess`: uint8 RGB [B, 3, H, W] (channels-last memory; pinned when CUDA is
        there), for a conversion on the accelerator (`to_input` after the copy: a quarter of the
        bytes to move). With it: float32 batches ready for that model, each image converted while
        it is in cache where the dataset can (`read_batch`), else per batch here.

        With workers, the workers decode, mirror (and convert) into reused shared buffers, and
        each batch is yielded in its buffer, no copy: the buffer goes back to its worker when
        the last tensor on it is freed (`shared_batches.lease`). Fresh shared memory would cost
        a page fault per 4 KiB in both processes, a copy another pass over the batch; only
        batches for CUDA are copied, into pinned memory.
        """
        batches = sampler.batches(epoch, start_batch)
        batched = hasattr(self.train, "__getitems__")
        requests = batches
        source: Dataset = self.train
        fmt = None
        pooled = False
        if batched:  # the workers mirror the images the epoch's coin picked, while decoding
            requests = [list(zip(b, self.flip_mask(epoch, torch.tensor(b)).tolist())) for b in batches]
            if hasattr(self.train, "read_batch"):
                fmt = _input_format(self.train, preprocess) if preprocess is not None else None
                pooled = self.num_workers > 0
                source = _BatchReads(self.train, fmt, pooled=pooled)
        pin = torch.cuda.is_available() and preprocess is None
        dl = DataLoader(source, batch_sampler=requests, num_workers=self.num_workers,
                        persistent_workers=False, pin_memory=pin and not pooled,
                        collate_fn=collate_batch if batched else None)
        from facerec.data.shared_batches import BatchReceiver, lease, release

        receiver = BatchReceiver()  # the workers' buffers, each mapped here once
        for i, batch in enumerate(dl):
            x, y = batch[0], torch.as_tensor(batch[1])
            self._epoch, self._indices, self._preflipped = epoch, torch.tensor(batches[i]), batched
            if pooled:
                x = receiver.receive(x)
            if pooled and x.numel():
                if pin:  # a pinned copy for the accelerator; the buffer is free again at once
                    shared, x = x, x.pin_memory()
                    release(shared)
                    del shared
                else:
                    x = lease(x)
            if batched:  # [B, H, W, 3] -> an NCHW view in channels-last memory, no copy
                x = x.permute(0, 3, 1, 2)
                self.skipped.extend(batch[2])  # records left out (already mirrored: nothing else to align)
            if preprocess is not None and x.shape[0] and x.dtype == torch.uint8:
                x = self.to_input(x, preprocess, train=True)
            yield x, y
            del x, y, batch  # the caller may have let go: free (and release) before the next batch

    def flip_mask(self, epoch: int, indices: torch.Tensor) -> torch.Tensor:
        """Whether each sample is mirrored in `epoch`: a seeded coin per (epoch, sample index), so
        augmentation does not depend on batch size, rank count or where a run was resumed."""
        if self._flip_bits is None or self._flip_bits[0] != epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7 + 3)
            self._flip_bits = (epoch, torch.rand(len(self.train), generator=g) < 0.5)
        return self._flip_bits[1][indices]

    def to_input(self, x: torch.Tensor, pre: Preprocess, train: bool) -> torch.Tensor:
        """uint8 RGB batch -> normalised float batch in the model's colour order, flipped at random."""
        from facerec.data.transforms import to_model_input
        from facerec.eval.embeddings import fit_to_contract

        if pre.color == "BGR":
            x = x.flip(1)
        x = fit_to_contract(x, pre)
        flip = train and self._indices is not None and not self._preflipped
        mask = self.flip_mask(self._epoch, self._indices) if flip else None
        return to_model_input(x, pre.mean, pre.std, flip_mask=mask)


class _BatchReads(Dataset):
    """What DataLoader workers call: a dataset's `read_batch` with an `InputFormat` (or none),
    filling reused shared buffers (`pooled`)."""

    def __init__(self, dataset: Dataset, fmt, pooled: bool) -> None:
        from facerec.data.shared_batches import SharedBatchPool

        self.dataset, self.fmt = dataset, fmt
        self.pool = SharedBatchPool() if pooled else None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list):
        x, y, skipped = self.dataset.read_batch(indices, self.fmt, pool=self.pool)
        if self.pool is None:
            return x, y, skipped
        # labels as numpy: pickled inline, where a tensor would get a shared-memory file of its own;
        # a buffer already sent once travels as a handle
        return self.pool.parcel(x), y.numpy(), skipped


def _input_format(dataset: Dataset, pre: Preprocess):
    """The per-image format for `pre` given the dataset's stored image size (read from its first
    record); None when a resize is needed or the size cannot be read cheaply."""
    from facerec.data.transforms import InputFormat

    if getattr(dataset, "color", "RGB") != "RGB":
        return None  # to_input expects RGB batches; keep one definition of the colour handling
    try:
        x, _, _ = dataset.read_batch([0])
    except DataError:
        return None  # a bad first record: the per-batch path reports it where it is read
    if x.shape[0] == 0:
        return None
    return InputFormat.for_model(pre, int(x.shape[1]), int(x.shape[2]))


def load_val_set(path: str | Path, name: str | None = None) -> ValSet:
    """Read and decode a `.bin` verification set."""
    from facerec.data.bins import read_bin
    from facerec.data.decode import decode_image

    p = Path(path)
    images, issame = read_bin(p)
    decoded = [decode_image(b, color="RGB") for b in images]
    shapes = {im.shape for im in decoded}
    if len(shapes) != 1:
        raise DataError(f"{p}: images of several sizes {sorted(shapes)}; a .bin must hold one size")
    return ValSet(name or p.stem, np.stack(decoded), np.asarray(issame, dtype=bool))


def build_train_data(cfg: Config, runtime=None) -> TrainData:
    """Open the configured training set (a `.rec`, or the built-in synthetic set) and val sets."""
    from facerec.data.dataset import RecordFaceDataset

    val_paths = list(cfg.data.val)
    if cfg.data.train == "synthetic":
        from facerec.data.synthetic_sets import build_synthetic

        spec = cfg.data.synthetic
        is_main = runtime is None or runtime.is_main
        if is_main:
            paths = build_synthetic(cfg.data.cache_dir, spec, log=print)
        if runtime is not None:
            runtime.barrier()
        paths = build_synthetic(cfg.data.cache_dir, spec)
        rec = paths.train_rec
        val_paths = [str(paths.val_bin), *val_paths]
    else:
        rec = Path(cfg.data.train)
        if not rec.exists():
            raise DataError(f"config key 'data.train': training set {str(rec)!r} does not exist")
    if rec.is_dir() or rec.suffix.lower() != ".rec":  # an identity-per-folder tree or a list file
        from facerec.data.dataset import ImageListDataset

        train = ImageListDataset(rec, color="RGB", on_bad=cfg.data.bad_records)
    else:
        train = RecordFaceDataset(str(rec), color="RGB", on_bad=cfg.data.bad_records)
    val_sets = {}
    for vp in val_paths:
        if not Path(vp).is_file():
            raise DataError(f"config key 'data.val': verification set {vp!r} {not_a_file_reason(vp, '.bin verification file')}")
        vs = load_val_set(vp, "synthetic_val" if cfg.data.train == "synthetic" and vp == val_paths[0] else None)
        val_sets[vs.name] = vs
    return TrainData(train=train, num_classes=int(train.num_classes), val_sets=val_sets,
                     num_workers=cfg.data.num_workers, seed=cfg.train.seed)
