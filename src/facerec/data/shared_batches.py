"""Reusable shared-memory batch buffers for DataLoader workers, delivered without a copy.

A fresh shared-memory buffer costs a page fault per 4 KiB page on first touch, in the worker
that fills it and again in the process that reads it: for a batch of 128 112x112 uint8 images
that was about as much time as decoding a third of them (measured in `benchmarks/loader.py`).
A worker therefore fills buffers from a small pool; each buffer begins with a header (a marker,
a busy flag, the pool's id and the buffer's slot) whose flag the training process clears with
`release` once nothing reads the batch any more. A worker never writes into a buffer whose flag
is set: when all of its buffers are busy it allocates a fresh one, so reuse can only save time,
never corrupt a batch.

Sending a shared tensor between processes passes a file descriptor over a socket each time
(~2 ms of the training process's time per batch, measured). A buffer therefore travels once:
after that the worker sends a `PooledBatch` handle (pool id, slot, shape, dtype) and the
training process's `BatchReceiver` finds the buffer it already has mapped.

The training process need not copy a batch out either: `lease` hands it the buffer itself as a
tensor that releases the buffer when the last tensor sharing its memory is freed (a view kept by
autograd, a list of batches the caller keeps: the buffer stays busy exactly as long).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

_MARKER = 0x66616365726563  # "facerec": tells a pooled buffer from any other tensor
_HEADER_BYTES = 32  # int64 marker, busy flag, pool id, slot (-1: not pooled)


@dataclass(frozen=True)
class PooledBatch:
    """A batch in a buffer the receiving process already has: what a worker sends after the
    buffer's first trip."""

    pool: int
    slot: int
    shape: tuple[int, ...]
    dtype: str  # numpy dtype string


class SharedBatchPool:
    """Up to `size` shared buffers per worker process, reused once the consumer released them."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._buffers: list[torch.Tensor] = []  # uint8 views of whole storages, header included
        self._sent: list[bool] = []
        self._id = 0

    def __getstate__(self) -> dict:  # a worker starts with no buffers of its own
        return {"size": self.size, "_buffers": [], "_sent": [], "_id": 0}

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        """An uninitialised tensor of `shape` and numpy `dtype` in shared memory, marked busy."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        for raw in self._buffers:
            head = _header(raw)
            if raw.numel() == _HEADER_BYTES + nbytes and int(head[1]) == 0:
                head[1] = 1
                return _view(raw.untyped_storage(), shape, dtype)
        if not self._id:  # random, not the pid: ids must differ across loaders' worker pools
            self._id = int.from_bytes(os.urandom(7), "little") + 1
        storage = torch.UntypedStorage._new_shared(_HEADER_BYTES + nbytes)
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (_HEADER_BYTES + nbytes,))
        pooled = len(self._buffers) < self.size
        _header(raw).copy_(torch.tensor([_MARKER, 1, self._id, len(self._buffers) if pooled else -1]))
        if pooled:
            self._buffers.append(raw)
            self._sent.append(False)
        return _view(storage, shape, dtype)

    def parcel(self, batch: torch.Tensor) -> torch.Tensor | PooledBatch:
        """What to send for `batch` (from `take`, or a leading slice of it): the tensor on its
        buffer's first trip or when it is not pooled, a `PooledBatch` handle after."""
        head = _header_of(batch)
        slot = int(head[3]) if head is not None and int(head[2]) == self._id else -1
        if slot < 0 or not self._sent[slot]:
            if slot >= 0:
                self._sent[slot] = True
            return batch
        return PooledBatch(self._id, slot, tuple(batch.shape), batch.numpy().dtype.str)


class BatchReceiver:
    """The training process's side: turns what workers sent into tensors on their buffers,
    keeping each pooled buffer mapped (no new mapping, no page faults when it comes again)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], torch.UntypedStorage] = {}

    def receive(self, item: torch.Tensor | PooledBatch) -> torch.Tensor:
        if isinstance(item, PooledBatch):
            return _view(self._buffers[(item.pool, item.slot)], item.shape, item.dtype)
        head = _header_of(item)
        if head is not None and int(head[3]) >= 0:
            self._buffers[(int(head[2]), int(head[3]))] = item.untyped_storage()
        return item


def _header(raw: torch.Tensor) -> torch.Tensor:
    return raw[:_HEADER_BYTES].view(torch.int64)


def _header_of(batch: torch.Tensor) -> torch.Tensor | None:
    """The header of the pooled buffer `batch` starts, or None for any other tensor."""
    storage = batch.untyped_storage()
    if batch.storage_offset() * batch.element_size() != _HEADER_BYTES or storage.nbytes() < _HEADER_BYTES:
        return None
    head = torch.empty(0, dtype=torch.int64).set_(storage, 0, (_HEADER_BYTES // 8,))
    return head if int(head[0]) == _MARKER else None


def _view(storage: torch.UntypedStorage, shape: tuple[int, ...], dtype) -> torch.Tensor:
    """The batch of `shape` and numpy `dtype` after the header of a pooled buffer's `storage`."""
    tdtype = torch.from_numpy(np.empty(0, dtype)).dtype
    itemsize = np.dtype(dtype).itemsize
    return torch.empty(0, dtype=tdtype).set_(storage, _HEADER_BYTES // itemsize, shape)


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
    head = _header_of(batch)
    if head is not None:
        head[1] = 0
