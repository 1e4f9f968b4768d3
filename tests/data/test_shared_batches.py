"""Shared batch buffers are reused only after the consumer released them."""

import gc

import numpy as np
import torch

from facerec.data.shared_batches import BatchReceiver, PooledBatch, SharedBatchPool, lease, release


def test_a_released_buffer_is_reused_and_a_busy_one_never_is():
    pool = SharedBatchPool(size=2)
    a = pool.take((4, 5, 3), np.uint8)
    a.fill_(7)
    b = pool.take((4, 5, 3), np.uint8)  # a is busy: another buffer
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    assert a.is_shared() and b.is_shared() and a.shape == (4, 5, 3)
    c = pool.take((4, 5, 3), np.uint8)  # pool full and all busy: a fresh, unpooled buffer
    assert c.untyped_storage().data_ptr() not in {a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()}
    assert torch.all(a == 7)  # nothing wrote into the busy buffer
    release(a[:2])  # a view of the batch, as the loader releases it
    d = pool.take((4, 5, 3), np.uint8)
    assert d.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
    f = pool.take((2, 3), np.float32)  # another size: its own buffer, aligned for floats
    assert f.dtype == torch.float32 and f.shape == (2, 3)


def test_release_ignores_other_tensors():
    t = torch.zeros(8, dtype=torch.uint8)
    release(t[2:])
    release(torch.arange(4, dtype=torch.int64)[2:])
    assert torch.equal(t, torch.zeros(8, dtype=torch.uint8))


def test_a_buffer_travels_once_then_as_a_handle_to_the_same_memory():
    pool, receiver = SharedBatchPool(size=1), BatchReceiver()
    a = pool.take((4, 5, 3), np.uint8)
    a.fill_(1)
    first = pool.parcel(a)
    assert first is a  # first trip: the tensor itself (its buffer is mapped on arrival)
    got = receiver.receive(first)
    release(got)
    b = pool.take((4, 5, 3), np.uint8)[:3]  # the same buffer again, a batch with a skipped record
    b.fill_(2)
    handle = pool.parcel(b)
    assert isinstance(handle, PooledBatch) and handle.shape == (3, 5, 3)
    again = receiver.receive(handle)
    assert again.data_ptr() == got.data_ptr() and again.shape == (3, 5, 3) and torch.all(again == 2)
    c = pool.take((4, 5, 3), np.uint8)  # pool full and all busy: unpooled, always sent whole
    assert pool.parcel(c) is c and receiver.receive(c) is c
    other = SharedBatchPool(size=1)  # another worker's slot 0 is another buffer
    d = other.take((4, 5, 3), np.uint8)
    assert other.parcel(d) is d


def test_a_lease_keeps_the_buffer_busy_until_its_last_view_is_freed():
    pool = SharedBatchPool(size=1)
    a = pool.take((2, 4, 4, 3), np.float32)
    a.fill_(5)
    x = lease(a).permute(0, 3, 1, 2)
    address = a.data_ptr()
    del a
    assert x.data_ptr() == address and x.is_contiguous(memory_format=torch.channels_last)
    view = x[1]
    del x
    gc.collect()
    assert pool.take((2, 4, 4, 3), np.float32).data_ptr() != address  # still busy: a fresh one
    assert torch.all(view == 5)
    del view
    gc.collect()
    assert pool.take((2, 4, 4, 3), np.float32).data_ptr() == address
