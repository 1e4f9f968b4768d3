import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from facerec.heads import ArcFace, CosFace, FullFC, build_head
from facerec.heads.partial_fc import PartialFC

C, D = 11, 8


def make_data(batch=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, D, generator=g) * 0.1
    emb = torch.randn(batch, D, generator=g)
    labels = torch.randint(0, C, (batch,), generator=g)
    labels[3] = -1  # ignored row
    return w, emb, labels


def full_reference(w, emb, labels, margin):
    head = FullFC(margin, D, C)
    with torch.no_grad():
        head.fc.weight.copy_(w)
    e = emb.clone().requires_grad_(True)
    loss = head(e, labels)
    loss.backward()
    return loss.detach(), e.grad, head.fc.weight.grad


@pytest.mark.parametrize("margin", [ArcFace(16.0, 0.5), CosFace(16.0, 0.35)])
def test_single_process_equals_full_softmax(margin):
    w, emb, labels = make_data()
    ref_loss, ref_ge, ref_gw = full_reference(w, emb, labels, margin)
    head = build_head("partial_fc", margin, D, C, sample_rate=1.0)
    with torch.no_grad():
        head.weight.copy_(w)
    e = emb.clone().requires_grad_(True)
    loss = head(e, labels)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e.grad, ref_ge, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, ref_gw, rtol=1e-4, atol=1e-6)


def test_sampling_always_keeps_positives():
    torch.manual_seed(0)
    head = PartialFC(ArcFace(16.0, 0.5), D, 1000, sample_rate=0.1)
    for step in range(5):
        labels = torch.randint(0, 1000, (64 + step,))  # batch size may change between steps
        loss = head(torch.randn(labels.numel(), D), labels)
        assert torch.isfinite(loss)
        kept = set(head.last_index.tolist())
        assert set(labels.tolist()) <= kept and len(kept) >= 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, sample_rate, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        w, emb, labels = make_data()
        sizes = [6, 4]  # uneven per-rank batches
        lo = sum(sizes[:rank])
        head = PartialFC(ArcFace(16.0, 0.5), D, C, sample_rate=sample_rate)
        with torch.no_grad():
            head.weight.copy_(w[head.class_start : head.class_start + head.num_local])
        e = emb[lo : lo + sizes[rank]].clone().requires_grad_(True)
        loss = head(e, labels[lo : lo + sizes[rank]])
        loss.backward()
        out[rank] = {"loss": loss.detach(), "ge": e.grad, "gw": head.weight.grad, "start": head.class_start,
                     "n": head.num_local, "index": head.last_index}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_single_process_full_softmax():
    w, emb, labels = make_data()
    ref_loss, ref_ge, ref_gw = full_reference(w, emb, labels, ArcFace(16.0, 0.5))
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), 1.0, out), nprocs=2, join=True)
    ge = torch.cat([out[0]["ge"], out[1]["ge"]])
    gw = torch.cat([out[0]["gw"], out[1]["gw"]])
    assert out[0]["n"] + out[1]["n"] == C and out[1]["start"] == out[0]["n"]
    for r in (0, 1):
        torch.testing.assert_close(out[r]["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ge, ref_ge, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-4, atol=1e-6)
