"""Sub-center ArcFace: max-pooled sub-centres in both heads, and the data-cleaning helpers."""

import math

import pytest
import torch
import torch.nn.functional as F

from facerec.heads import ArcFace, FullFC, NormLinear, build_head
from facerec.heads.subcenter import dominant_subcenters, keep_dominant, subcenter_outliers


def test_norm_linear_pools_the_max_over_each_class_subcentres():
    torch.manual_seed(0)
    fc = NormLinear(6, 4, sub_centers=3)
    assert fc.weight.shape == (12, 6)
    emb = torch.randn(5, 6)
    naive = torch.empty(5, 4)
    for b in range(5):
        for c in range(4):
            naive[b, c] = max(F.cosine_similarity(emb[b], fc.weight[c * 3 + j], dim=0) for j in range(3))
    torch.testing.assert_close(fc(emb), naive, atol=1e-6, rtol=0)
    assert fc.subcenter_cosines(emb).shape == (5, 4, 3)


@pytest.mark.parametrize("sparse", [False, True])
def test_partial_fc_with_subcentres_equals_full_head(sparse):
    torch.manual_seed(0)
    C, D, k = 7, 8, 3
    w = torch.randn(C * k, D)
    emb = torch.randn(9, D)
    labels = torch.randint(0, C, (9,))
    full = FullFC(ArcFace(16.0, 0.5), D, C, sub_centers=k)
    pfc = build_head("partial_fc", ArcFace(16.0, 0.5), D, C, sample_rate=1.0, sub_centers=k, sparse_grad=sparse)
    with torch.no_grad():
        full.fc.weight.copy_(w)
        pfc.weight.copy_(w)
    e1, e2 = emb.clone().requires_grad_(True), emb.clone().requires_grad_(True)
    l1, l2 = full(e1, labels), pfc(e2, labels)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e2.grad, e1.grad, rtol=1e-4, atol=1e-6)
    gw = pfc.weight.grad.to_dense() if sparse else pfc.weight.grad
    torch.testing.assert_close(gw, full.fc.weight.grad, rtol=1e-4, atol=1e-6)


def _clustered(k=3, classes=4, per_class=10, noisy=(5, 17)):
    """Class c's samples near its sub-centre 1; the samples in `noisy` near another class."""
    g = torch.Generator().manual_seed(0)
    D = 16
    weight = F.normalize(torch.randn(classes * k, D, generator=g), dim=1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    emb = weight[labels * k + 1] + 0.05 * torch.randn(labels.numel(), D, generator=g)
    for i in noisy:
        other = (int(labels[i]) + 1) % classes
        emb[i] = weight[other * k + 1] + 0.05 * torch.randn(D, generator=g)
    return weight, emb, labels


def test_dominant_subcentre_outliers_and_keep_dominant():
    weight, emb, labels = _clustered()
    dominant = dominant_subcenters(weight, emb, labels, 3)
    assert dominant.tolist() == [1, 1, 1, 1]
    outliers = subcenter_outliers(weight, emb, labels, 3, threshold_degrees=60.0)
    assert sorted(o.index for o in outliers) == [5, 17]
    for o in outliers:  # the reported angle is the angle to the dominant sub-centre
        cos = F.cosine_similarity(emb[o.index], weight[o.label * 3 + 1], dim=0).item()
        assert o.angle_degrees == pytest.approx(math.degrees(math.acos(cos)), abs=1e-3)
        assert o.label == int(labels[o.index])
    assert [o.angle_degrees for o in outliers] == sorted((o.angle_degrees for o in outliers), reverse=True)
    kept = keep_dominant(weight, dominant, 3)
    torch.testing.assert_close(kept, weight.view(4, 3, -1)[:, 1])
