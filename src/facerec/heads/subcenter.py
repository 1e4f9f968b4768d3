"""Sub-center ArcFace's data cleaning (Deng et al., "Sub-center ArcFace: Boosting Face Recognition
by Large-scale Noisy Web Faces", ECCV 2020).

Trained with k sub-centres per class, clean faces gather around one *dominant* sub-centre while
noisy (mislabelled) faces sit near the others. These helpers find each class's dominant
sub-centre, list the samples farther than a threshold angle (the paper uses 75 degrees) from it,
and drop the non-dominant sub-centres so training can continue with one centre per class.
Weights are class-major `[C * k, D]` (as `NormLinear` and `PartialFC` store them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _own_subcenter_cosines(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, k: int,
                           chunk: int = 8192) -> torch.Tensor:
    """`[N, k]` cosines of each sample to its own class's k sub-centres."""
    w = weight.detach().float().view(-1, k, weight.shape[1])
    out = []
    for s in range(0, embeddings.shape[0], chunk):
        e = F.normalize(embeddings[s : s + chunk].detach().float(), dim=1)
        centres = F.normalize(w[labels[s : s + chunk]], dim=2)  # [n, k, D]
        out.append(torch.einsum("nd,nkd->nk", e, centres).clamp(-1.0, 1.0))
    return torch.cat(out) if out else embeddings.new_zeros(0, k)


def dominant_subcenters(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """Index (0..k-1) of each class's dominant sub-centre: the one most of its samples are
    closest to (ties: the lower index; classes without samples: 0). Returns `[C]` long."""
    k = sub_centers
    num_classes = weight.shape[0] // k
    labels = labels.long().view(-1)
    nearest = _own_subcenter_cosines(weight, embeddings, labels, k).argmax(dim=1)
    counts = torch.zeros(num_classes * k, dtype=torch.long)
    counts.index_add_(0, labels * k + nearest, torch.ones_like(labels))
    return counts.view(num_classes, k).argmax(dim=1)


@dataclass(frozen=True)
class Outlier:
    index: int  # position in the embeddings given
    label: int
    angle_degrees: float  # to the class's dominant sub-centre


def subcenter_outliers(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, sub_centers: int,
                       threshold_degrees: float = 75.0) -> list[Outlier]:
    """Samples whose angle to their class's dominant sub-centre exceeds `threshold_degrees`,
    largest angle first: the likely label noise to drop from the training set."""
    labels = labels.long().view(-1)
    dominant = dominant_subcenters(weight, embeddings, labels, sub_centers)
    cos = _own_subcenter_cosines(weight, embeddings, labels, sub_centers)
    angle = torch.rad2deg(torch.acos(cos[torch.arange(labels.numel()), dominant[labels]]))
    picked = torch.nonzero(angle > threshold_degrees, as_tuple=True)[0]
    picked = picked[torch.argsort(angle[picked], descending=True)]
    return [Outlier(int(i), int(labels[i]), float(angle[i])) for i in picked]


def keep_dominant(weight: torch.Tensor, dominant: torch.Tensor, sub_centers: int) -> torch.Tensor:
    """`[C, D]` weights keeping only each class's dominant sub-centre (to continue with k = 1)."""
    w = weight.detach().view(-1, sub_centers, weight.shape[1])
    return w[torch.arange(w.shape[0]), dominant].clone()
