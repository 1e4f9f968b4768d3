"""Classification heads that own the class centres and return the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_centres(num_rows: int, dim: int, start: int = 0, stop: int | None = None, std: float = 0.01,
                 chunk: int = 4096) -> torch.Tensor:
    """Rows `start:stop` of a `[num_rows, dim]` N(0, std) matrix drawn from the global RNG in
    fixed chunks of rows, so a shard (Partial FC on one rank) gets exactly the rows the full
    matrix would have: training on N ranks starts from the same centres as on one."""
    stop = num_rows if stop is None else stop
    out = torch.empty(stop - start, dim)
    for lo in range(0, num_rows, chunk):
        hi = min(lo + chunk, num_rows)
        block = torch.normal(0.0, std, (hi - lo, dim))
        a, b = max(lo, start), min(hi, stop)
        if a < b:
            out[a - start : b - start] = block[a - lo : b - lo]
    return out


def pool_subcenters(cosine: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """Max over each class's `k` sub-centres: `[B, C * k] -> [B, C]` (class-major layout)."""
    if sub_centers == 1:
        return cosine
    return cosine.view(cosine.shape[0], -1, sub_centers).amax(dim=2)


class NormLinear(nn.Module):
    """Cosine between L2-normalised embeddings and class centres, in fp32, in [-1, 1].

    With `sub_centers = k > 1` each class has k centres (sub-center ArcFace, Deng et al., ECCV
    2020); `weight` is `[C * k, D]`, class-major (rows c*k .. c*k+k-1 belong to class c), and a
    class's cosine is the max over its sub-centres. `subcenter_cosines` gives all of them.
    """

    def __init__(self, embedding_size: int, num_classes: int, sub_centers: int = 1) -> None:
        super().__init__()
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be >= 1, got {sub_centers}")
        self.sub_centers = sub_centers
        self.weight = nn.Parameter(init_centres(num_classes * sub_centers, embedding_size))

    def subcenter_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`[B, C, k]` cosines to every sub-centre."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            e = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return (e @ w.t()).clamp(-1.0, 1.0).view(e.shape[0], -1, self.sub_centers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.subcenter_cosines(embeddings).amax(dim=2)


def add_extra_loss(margin: nn.Module, loss: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """`loss` plus the margin's `extra_loss(norms)` if it has one (MagFace's magnitude regulariser);
    `norms` of the rows that count (labels != -1)."""
    extra = getattr(margin, "extra_loss", None)
    return loss + extra(norms) if extra is not None else loss


def _margin_loss(margin: nn.Module, cosine: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(margin(cosine, labels, norms), labels, ignore_index=-1)
    return add_extra_loss(margin, loss, norms[labels >= 0])


class FullFC(nn.Module):
    """All class centres on every step: cosine logits -> margin -> softmax cross-entropy (fp32).

    The margin gets `(cosine, labels, norms)`, norms being the embeddings' L2 norms before
    normalisation (AdaFace, MagFace use them); a margin with `extra_loss(norms)` adds it.
    """

    def __init__(self, margin: nn.Module, embedding_size: int, num_classes: int, sub_centers: int = 1) -> None:
        super().__init__()
        self.margin = margin
        self.fc = NormLinear(embedding_size, num_classes, sub_centers)
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = embeddings.float()
            return _margin_loss(self.margin, self.fc(emb), labels, emb.norm(dim=1))


class SoftmaxHead(nn.Module):
    """Plain softmax classifier: `Linear(D, C)` with bias, cross-entropy, no normalisation and no
    margin (the seed's "Softmax" option; a baseline, not a metric-learning loss)."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.cross_entropy(self.fc(embeddings.float()), labels, ignore_index=-1)


HEAD_TYPES = ("fc", "partial_fc", "softmax")


def build_head(kind: str, margin: nn.Module | None, embedding_size: int, num_classes: int,
               sample_rate: float = 1.0, sub_centers: int = 1, sparse_grad: bool = False) -> nn.Module:
    """"fc" (all centres), "partial_fc" (sampled centres, sharded across ranks) or "softmax"
    (plain linear classifier; the margin is not used). `sparse_grad` is Partial FC's."""
    if sparse_grad and kind != "partial_fc":
        from facerec.errors import ConfigError

        raise ConfigError("config key 'head.sparse_grad': only head.type=partial_fc has a sparse gradient")
    if kind == "fc":
        return FullFC(margin, embedding_size, num_classes, sub_centers=sub_centers)
    if kind == "partial_fc":
        from facerec.heads.partial_fc import PartialFC

        return PartialFC(margin, embedding_size, num_classes, sample_rate=sample_rate, sub_centers=sub_centers,
                         sparse_grad=sparse_grad)
    if kind == "softmax":
        return SoftmaxHead(embedding_size, num_classes)
    from facerec.errors import ConfigError

    raise ConfigError(f"config key 'head.type': unknown head {kind!r} ({', '.join(HEAD_TYPES)})")
