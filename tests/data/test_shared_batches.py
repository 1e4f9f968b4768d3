"""Shared batch buffers are reused only after the consumer released them."""

import numpy as np
import torch

from facerec.data.shared_batches import SharedBatchPool, release


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
