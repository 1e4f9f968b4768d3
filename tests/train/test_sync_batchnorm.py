"""SyncBatchNorm on gloo: 2 processes with slices of a batch normalise, update running statistics
and back-propagate exactly as one BatchNorm over the whole batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from facerec.train.sync_batchnorm import SyncBatchNorm1d, SyncBatchNorm2d, convert_sync_batchnorm

# (shape of the global batch, BatchNorm class, keyword arguments, input dtype, memory format)
CASES = [
    ((11, 4, 5, 3), nn.BatchNorm2d, {}, torch.float32, torch.contiguous_format),
    ((11, 4, 5, 3), nn.BatchNorm2d, {"momentum": None}, torch.float32, torch.channels_last),
    ((9, 6), nn.BatchNorm1d, {"affine": False}, torch.float32, torch.contiguous_format),
    ((10, 3, 4), nn.BatchNorm1d, {"eps": 1e-3}, torch.float32, torch.contiguous_format),
    ((12, 4, 5, 5), nn.BatchNorm2d, {}, torch.bfloat16, torch.channels_last),
]
SPLIT = [5]  # rank 0 takes the first 5 rows, rank 1 the rest: uneven slices


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case_tensors(shape, dtype, fmt, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 3 + 1.5).to(dtype)  # a mean far from 0: cancellation would show
    if fmt is torch.channels_last:
        x = x.contiguous(memory_format=fmt)
    weights = torch.randn(shape, generator=g)  # the loss: sum(y * weights)
    return x, weights


def _reference(cls, kwargs, x, weights, steps=2):
    bn = cls(x.shape[1], **kwargs)
    if bn.affine:
        g = torch.Generator().manual_seed(x.shape[1])
        with torch.no_grad():
            bn.weight.copy_(torch.rand(x.shape[1], generator=g) + 0.5)
            bn.bias.copy_(torch.rand(x.shape[1], generator=g) - 0.5)
    outs = []
    for step in range(steps):
        xi = (x + step).detach().requires_grad_()
        y = bn(xi)
        (y.float() * weights).sum().backward()
        outs.append((y.detach(), xi.grad))
    return bn, outs


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = []
        for i, (shape, cls, kwargs, dtype, fmt) in enumerate(CASES):
            x, weights = _case_tensors(shape, dtype, fmt, seed=i)
            ref, _ = _reference(cls, kwargs, x, weights, steps=0)  # same initial affine parameters
            bn = convert_sync_batchnorm(nn.Sequential(ref))[0]
            assert type(bn) is {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}[cls]
            part = slice(0, SPLIT[0]) if rank == 0 else slice(SPLIT[0], None)
            got = []
            for step in range(2):
                xi = (x + step)[part].detach().requires_grad_()
                y = bn(xi)
                (y.float() * weights[part]).sum().backward()
                got.append((y.detach(), xi.grad))
            grads = [p.grad.clone() for p in bn.parameters()]
            for g in grads:
                torch.distributed.all_reduce(g)  # what DDP does with the affine gradients
            bn.eval()
            evaluated = bn(x[part]).detach()  # eval: running statistics, no collective
            results.append({"got": got, "grads": grads, "running": (bn.running_mean.clone(), bn.running_var.clone()),
                            "eval": evaluated})
        out[rank] = results
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow  # two fresh processes: ~10 s
def test_two_ranks_normalise_and_backpropagate_like_one_batchnorm_over_the_whole_batch():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _port(), out), nprocs=2, join=True)
    out = {r: out[r] for r in (0, 1)}
    for i, (shape, cls, kwargs, dtype, fmt) in enumerate(CASES):
        x, weights = _case_tensors(shape, dtype, fmt, seed=i)
        ref, outs = _reference(cls, kwargs, x, weights)
        tol = {"rtol": 2e-2, "atol": 2e-2} if dtype is torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
        for step, (y_ref, gx_ref) in enumerate(outs):
            for what, k in (("output", 0), ("input gradient", 1)):
                got = torch.cat([out[0][i]["got"][step][k], out[1][i]["got"][step][k]])
                assert got.dtype == y_ref.dtype, (i, what)
                torch.testing.assert_close(got, (y_ref, gx_ref)[k], **tol, msg=f"case {i} step {step}: {what}")
        for r in (0, 1):
            for p, g in zip(ref.parameters(), out[r][i]["grads"]):
                torch.testing.assert_close(g, p.grad, rtol=1e-4 if dtype is torch.float32 else 2e-2, atol=1e-4)
            torch.testing.assert_close(out[r][i]["running"][0], ref.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[r][i]["running"][1], ref.running_var, rtol=1e-5, atol=1e-6)
        ref.eval()
        torch.testing.assert_close(torch.cat([out[0][i]["eval"], out[1][i]["eval"]]), ref(x).detach(), **tol)


def test_one_process_is_plain_batchnorm_bit_for_bit():
    x = torch.randn(6, 3, 4, 4)
    ref = nn.BatchNorm2d(3)
    model = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    model[1].load_state_dict(ref.state_dict())
    assert torch.equal(model[1](x), ref(x))
    assert torch.equal(model[1].running_var, ref.running_var)


def test_conversion_keeps_parameters_buffers_and_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(64))
    model[3].weight.requires_grad = False  # as insightface freezes the embedding BN's scale
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    state = list(model.state_dict())
    converted = convert_sync_batchnorm(model)
    assert converted is model and isinstance(model[1], SyncBatchNorm2d) and isinstance(model[3], SyncBatchNorm1d)
    assert isinstance(model[1], nn.BatchNorm2d)  # code asking for a BatchNorm2d still finds one
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(b is buffers[n] for n, b in model.named_buffers())
    assert list(model.state_dict()) == state and not model[3].weight.requires_grad
