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


@pytest.mark.parametrize("sparse", [False, True])
def test_sampled_cosine_chunks_and_gradients_match_autograd(sparse):
    from facerec.heads.partial_fc import _SampledCosine

    g = torch.Generator().manual_seed(0)
    w = (torch.randn(20, D, generator=g) * 0.3).requires_grad_(True)
    e = torch.nn.functional.normalize(torch.randn(5, D, generator=g), dim=1).requires_grad_(True)
    index = torch.tensor([0, 2, 3, 7, 8, 11, 19])
    upstream = torch.randn(5, index.numel(), generator=g)
    ref = e @ torch.nn.functional.normalize(w[index], dim=1).t()
    ref_ge, ref_gw = torch.autograd.grad((ref * upstream).sum(), (e, w))
    out = _SampledCosine.apply(e, w, index, sparse, 3)  # chunks of 3 rows: 3 + 3 + 1
    ge, gw = torch.autograd.grad((out * upstream).sum(), (e, w))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(ge, ref_ge)
    assert gw.is_sparse == sparse
    gw = gw.to_dense() if sparse else gw
    torch.testing.assert_close(gw, ref_gw)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index] = False
    assert gw[untouched].abs().sum() == 0


def _sampling_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(100 + rank)  # ranks sample different negatives
        classes = 400
        head = PartialFC(CosFace(16.0, 0.35), D, classes, sample_rate=0.1, sparse_grad=True)
        records = []
        for step, n in enumerate([7, 12, 3, 9, 16]):  # batch sizes change between steps and ranks
            g = torch.Generator().manual_seed(1000 * step + rank)
            labels = torch.randint(0, classes, (n + rank,), generator=g)
            e = torch.randn(labels.numel(), D, generator=g, requires_grad=True)
            loss = head(e, labels)
            loss.backward()
            gathered = [torch.zeros(0, dtype=torch.long)] * world
            dist.all_gather_object(gathered, labels)
            records.append({"loss": loss.item(), "labels": torch.cat(gathered).tolist(),
                            "index": head.last_index.tolist(), "finite": bool(torch.isfinite(e.grad).all()),
                            "grad_rows": head.weight.grad.coalesce().indices()[0].add(head.class_start).tolist()})
            head.weight.grad = None
        out[rank] = {"records": records, "start": head.class_start, "n": head.num_local,
                     "num_sample": head.num_sample}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_sample_rate_keeps_every_positive_class():
    out = mp.Manager().dict()
    mp.spawn(_sampling_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    for step in range(5):
        r0, r1 = out[0]["records"][step], out[1]["records"][step]
        assert r0["loss"] == pytest.approx(r1["loss"], rel=1e-6)  # one global loss
        assert r0["labels"] == r1["labels"]
        sampled = set(r0["index"]) | set(r1["index"])
        assert set(r0["labels"]) <= sampled  # every positive of the global batch, on its own rank
        for r in (0, 1):
            rec, lo, n = out[r]["records"][step], out[r]["start"], out[r]["n"]
            positives = {c for c in rec["labels"] if lo <= c < lo + n}
            assert len(rec["index"]) == max(out[r]["num_sample"], len(positives))
            assert all(lo <= c < lo + n for c in rec["index"])
            assert rec["finite"] and set(rec["grad_rows"]) == set(rec["index"])  # sparse grad: sampled rows only
