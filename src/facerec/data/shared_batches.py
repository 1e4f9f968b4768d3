"""Reusable shared-memory batch buffers for DataLoader workers.

A fresh shared-memory buffer costs a page fault per 4 KiB page on first touch, in the worker
that fills it and again in the process that reads it: for a batch of 128 112x112 uint8 images
that was about as much time as decoding a third of them (measured in `benchmarks/loader.py`).
A worker therefore fills buffers from a small pool; each buffer begins with a 16-byte header
(a marker and a busy flag) that the training process clears with `release` once nothing reads
the batch any more. A worker never writes into a buffer whose flag is set: when all of its
buffers are busy it allocates a fresh one, so reuse can only save time, never corrupt a batch.

The training process need not copy a batch out either: `lease` hands it the buffer itself as a
tensor that releases the buffer when the last tensor sharing its memory is freed (a view kept by
autograd, a list of batches the caller keeps: the buffer stays busy exactly as long).
"""

from __future__ import annotations

import numpy as np
import torch

_MARKER = 0x66616365726563  # "facerec": tells a pooled buffer from any other tensor
_HEADER_BYTES = 16


class SharedBatchPool:
    """Up to `size` shared buffers per worker process, reused once the consumer released them."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._buffers: list[torch.Tensor] = []  # uint8 views of whole storages, header included

    def __getstate__(self) -> dict:  # a worker starts with no buffers of its own
        return {"size": self.size, "_buffers": []}

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and numpy `dtype` in shared memory, marked busy."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
        for raw in self._buffers:
            head = raw[:_HEADER_BYTES].view(torch.int64)
            if raw.numel() == _HEADER_BYTES + nbytes and int(head[1]) == 0:
                head[1] = 1
                return _view(raw, shape, tdtype)
        storage = torch.UntypedStorage._new_shared(_HEADER_BYTES + nbytes)
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (_HEADER_BYTES + nbytes,))
        head = raw[:_HEADER_BYTES].view(torch.int64)
        head[0], head[1] = _MARKER, 1
        if len(self._buffers) < self.size:
            self._buffers.append(raw)
        return _view(raw, shape, tdtype)


def _view(raw: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(raw.untyped_storage(), _HEADER_BYTES // itemsize, shape)


class _Lease:
    """Exposes a pooled batch's memory to numpy (`__array_interface__`) and releases the buffer
    when collected: numpy keeps it as the array's base, torch keeps that array with the storage
    of every tensor made from it."""

    def __init__(self, batch: torch.Tensor) -> None:
        self._batch = batch  # keeps the mapping alive as long as the lease
        itemsize = batch.element_size()
        self.__array_interface__ = {
            "data": (batch.data_ptr(), False), "shape": tuple(batch.shape), "version": 3,
            "typestr": batch.numpy().dtype.str, "strides": tuple(s * itemsize for s in batch.stride()),
        }

    def __del__(self) -> None:
        try:
            release(self._batch)
        except Exception:  # interpreter shutdown: nobody will take the buffer again anyway
            pass


def lease(batch: torch.Tensor) -> torch.Tensor:
    """`batch` (a pooled buffer as `SharedBatchPool.take` gave it, or a view of one) as a tensor
    on the same memory that gives the buffer back to its worker once it, and every tensor
    sharing its storage, is freed: zero-copy delivery that never lets a worker overwrite a batch
    still in use. Do not also `release` the batch."""
    return torch.from_numpy(np.asarray(_Lease(batch)))


def release(batch: torch.Tensor) -> None:
    """Hand a pooled batch's buffer back to its worker (no-op for any other tensor). Call it
    only when nothing will read `batch` (or a view of it) again."""
    storage = batch.untyped_storage()
    if batch.storage_offset() * batch.element_size() != _HEADER_BYTES or storage.nbytes() < _HEADER_BYTES:
        return
    head = torch.empty(0, dtype=torch.int64).set_(storage, 0, (2,))
    if int(head[0]) == _MARKER:
        head[1] = 0
