"""Classification heads that own the class centres and return the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NormLinear(nn.Module):
    """Cosine between L2-normalised embeddings and class centres `[C, D]`, in fp32, in [-1, 1]."""

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            e = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return (e @ w.t()).clamp(-1.0, 1.0)


class FullFC(nn.Module):
    """All class centres on every step: cosine logits -> margin -> softmax cross-entropy (fp32)."""

    def __init__(self, margin: nn.Module, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.margin = margin
        self.fc = NormLinear(embedding_size, num_classes)
        self.num_classes = num_classes

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = embeddings.float()
            logits = self.margin(self.fc(emb), labels, emb.norm(dim=1))
            return F.cross_entropy(logits, labels, ignore_index=-1)


def build_head(kind: str, margin: nn.Module, embedding_size: int, num_classes: int, sample_rate: float = 1.0) -> nn.Module:
    """"fc" (all centres) or "partial_fc" (sampled centres, sharded across ranks)."""
    if kind == "fc":
        return FullFC(margin, embedding_size, num_classes)
    if kind == "partial_fc":
        from facerec.heads.partial_fc import PartialFC

        return PartialFC(margin, embedding_size, num_classes, sample_rate=sample_rate)
    from facerec.errors import ConfigError

    raise ConfigError(f"config key 'head.type': unknown head {kind!r} (fc, partial_fc)")
