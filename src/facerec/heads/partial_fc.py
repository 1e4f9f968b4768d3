"""Partial FC: class centres sharded across ranks, a sample of negative centres per step.

An, Zhu, et al., "Partial FC: Training 10 Million Identities on a Single Machine" (ICCVW 2021)
and "Killing Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs by
Partial FC" (CVPR 2022). Each rank holds `num_local` of the `num_classes` centres; embeddings and
labels are all-gathered, every rank computes the cosine logits of the whole global batch against
its (sampled) centres, and the softmax cross-entropy is computed across ranks by all-reducing
the row maxima and the sums of exponentials. With `sample_rate < 1` each rank keeps all positive
centres of the batch plus a uniform sample of negatives. With one process it is the plain head
with sampling.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from facerec.heads.fc import add_extra_loss, init_centres, pool_subcenters


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's `x` (first dimensions `sizes`) in rank order."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class _GatherVariable(torch.autograd.Function):
    """All-gather tensors whose first dimension may differ across ranks; gradients flow back.

    The backward all-reduces the gradient of the gathered tensor (every rank's loss depends on
    every rank's rows) and returns this rank's slice.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    _, world = _world()
    t = torch.tensor([n], device=device)
    out = [torch.zeros_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return [int(v.item()) for v in out]


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over logits split by class across ranks; rows with label -1 on a
    rank have their target elsewhere (or nowhere, for ignored rows: `valid` is False)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        distributed = _world()[1] > 1
        mx = logits.max(dim=1, keepdim=True)[0]
        if distributed:
            dist.all_reduce(mx, dist.ReduceOp.MAX)
        prob = torch.sub(logits, mx).exp_()
        denom = prob.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(denom)
        prob.div_(denom)
        local = torch.nonzero(labels >= 0, as_tuple=True)[0]
        target = torch.zeros(logits.shape[0], device=logits.device, dtype=logits.dtype)
        target[local] = prob[local, labels[local]]
        if distributed:
            dist.all_reduce(target)
        n_valid = valid.sum().clamp(min=1)
        loss = -torch.log(target[valid].clamp(min=1e-30)).sum() / n_valid
        ctx.save_for_backward(prob, labels, valid, n_valid)
        ctx.consumed = False
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("Partial FC's cross-entropy cannot be backpropagated twice (retain_graph)")
        ctx.consumed = True
        prob, labels, valid, n_valid = ctx.saved_tensors
        grad = prob  # used once: turned into the gradient in place ([B, k] is large at 1M classes)
        local = torch.nonzero(labels >= 0, as_tuple=True)[0]
        grad[local, labels[local]] -= 1.0
        grad[~valid] = 0.0
        return grad.mul_(grad_out / n_valid), None, None


class _SampledCosine(torch.autograd.Function):
    """Cosines `[B, k]` between normalised embeddings and the normalised rows `weight[index]`,
    computed chunk by chunk so the `[k, D]` gathered centres are never held (the backward
    gathers them again). The gradient of `weight` is row-sparse: a sparse COO tensor over the
    `index` rows with `sparse=True` (for `facerec.train.optim.SGD`'s lazy row update, so no dense
    `[C, D]` gradient is ever allocated), or a dense tensor otherwise."""

    @staticmethod
    def forward(ctx, emb_n: torch.Tensor, weight: torch.Tensor, index: torch.Tensor, sparse: bool, chunk: int) -> torch.Tensor:
        k = index.numel()
        cos = emb_n.new_empty(emb_n.shape[0], k)
        inv = emb_n.new_empty(k)
        for s in range(0, k, chunk):
            w = weight[index[s : s + chunk]]
            inv[s : s + chunk] = 1.0 / w.norm(dim=1).clamp_min(1e-12)
            cos[:, s : s + chunk] = (emb_n @ w.t()).mul_(inv[s : s + chunk])
        cos.clamp_(-1.0, 1.0)
        ctx.save_for_backward(emb_n, weight, index, inv)
        ctx.sparse, ctx.chunk = sparse, chunk
        return cos

    @staticmethod
    def backward(ctx, grad_cos: torch.Tensor):
        emb_n, weight, index, inv = ctx.saved_tensors
        k, chunk = index.numel(), ctx.chunk
        grad_emb = torch.zeros_like(emb_n)
        values = weight.new_empty(k, weight.shape[1])
        for s in range(0, k, chunk):
            w = weight[index[s : s + chunk]]
            inv_c = inv[s : s + chunk]
            g = grad_cos[:, s : s + chunk] * inv_c  # d loss / d (e . w_j) for unnormalised w_j
            grad_emb.addmm_(g, w)
            cos_c = (emb_n @ w.t()).mul_(inv_c)
            coef = (g * cos_c).sum(dim=0).mul_(inv_c)  # sum_b grad_bj cos_bj / |w_j|^2
            out = values[s : s + chunk]
            torch.mm(g.t(), emb_n, out=out)
            out.addcmul_(w, coef.unsqueeze(1), value=-1.0)
        if ctx.sparse:
            grad_w = torch.sparse_coo_tensor(index.unsqueeze(0), values, weight.shape, is_coalesced=True,
                                             check_invariants=False)
        else:
            grad_w = torch.zeros_like(weight).index_add_(0, index, values)
        return grad_emb, grad_w, None, None, None


class PartialFC(nn.Module):
    """Sharded, sampled class centres with a margin and a distributed softmax cross-entropy.

    Args:
        margin: a margin module `(cosine, labels, norms) -> logits` (facerec.heads.margins).
        embedding_size: D. num_classes: C over all ranks.
        sample_rate: fraction of this rank's centres used per step (positives always kept).
        sub_centers: k centres per class (sub-center ArcFace), max-pooled; sampled by class.
        sparse_grad: give `weight` a row-sparse gradient (only the sampled rows). Use it with
            `facerec.train.optim.SGD` (`optim.name: sgd`), which updates only those rows'
            momentum and weights ("lazy" momentum and weight decay, as the original Partial FC):
            no dense `[C, D]` gradient is allocated, so peak memory stays near weights + momentum.
            Off: a dense gradient (zero outside the sample), for any optimiser (Partial FC v2).
    The state dict holds this rank's shard `weight [num_local * k, D]`; `class_start` is its
    first class.
    """

    def __init__(self, margin: nn.Module, embedding_size: int, num_classes: int, sample_rate: float = 1.0,
                 sub_centers: int = 1, sparse_grad: bool = False, chunk_size: int = 8192) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        self.rank, self.world_size = _world()
        if self.world_size > 1 and getattr(margin, "needs_global_target", False):
            raise ValueError(f"{type(margin).__name__} needs every row's target cosine on every rank; it is not "
                             "supported by PartialFC across several processes (use head.type=fc)")
        base, extra = divmod(num_classes, self.world_size)
        self.num_local = base + (1 if self.rank < extra else 0)
        self.class_start = self.rank * base + min(self.rank, extra)
        self.num_classes, self.embedding_size, self.sample_rate = num_classes, embedding_size, sample_rate
        self.sub_centers, self.sparse_grad, self.chunk_size = sub_centers, sparse_grad, chunk_size
        self.num_sample = max(1, int(math.ceil(sample_rate * self.num_local)))
        self.margin = margin
        k = sub_centers  # this rank's rows of the matrix a single process would draw
        self.weight = nn.Parameter(init_centres(num_classes * k, embedding_size, self.class_start * k,
                                                (self.class_start + self.num_local) * k))
        self.last_index: torch.Tensor | None = None  # classes used by the last step (for tests/inspection)

    def sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local classes to use (all positives + random negatives, sorted), and labels remapped."""
        if self.num_sample >= self.num_local:
            return torch.arange(self.num_local, device=local_labels.device), local_labels
        pos = torch.unique(local_labels[local_labels >= 0])
        score = torch.rand(self.num_local, device=local_labels.device)
        score[pos] = 2.0
        k = max(self.num_sample, int(pos.numel()))
        index = torch.topk(score, k=k)[1].sort()[0]
        remapped = local_labels.clone()
        ok = local_labels >= 0
        remapped[ok] = torch.searchsorted(index, local_labels[ok])
        return index, remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = embeddings.float()
            labels = labels.view(-1).long()
            if self.world_size > 1:
                sizes = _gather_sizes(emb.shape[0], emb.device)
                emb = _GatherVariable.apply(emb, sizes, self.rank)
                labels = _all_gather_rows(labels, sizes)
            valid = labels >= 0
            local = labels - self.class_start
            local[(local < 0) | (local >= self.num_local) | ~valid] = -1
            index, local = self.sample(local)
            self.last_index = index + self.class_start
            k = self.sub_centers
            rows = index if k == 1 else (index.unsqueeze(1) * k + torch.arange(k, device=index.device)).view(-1)
            cos = _SampledCosine.apply(F.normalize(emb, dim=1), self.weight, rows, self.sparse_grad, self.chunk_size)
            cos = pool_subcenters(cos, k)
            norms = emb.norm(dim=1)
            loss = _DistCrossEntropy.apply(self.margin(cos, local, norms), local, valid)
            return add_extra_loss(self.margin, loss, norms[valid])
