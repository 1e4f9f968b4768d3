import pytest
import torch
import torch.nn.functional as F

from facerec.errors import ConfigError
from facerec.heads import SoftmaxHead, build_head, create_margin


def test_softmax_head_is_linear_with_bias_and_cross_entropy():
    torch.manual_seed(0)
    head = build_head("softmax", None, 6, 4)
    assert isinstance(head, SoftmaxHead)
    emb = torch.randn(5, 6)
    labels = torch.tensor([0, 3, -1, 2, 1])
    ok = labels >= 0
    expected = F.cross_entropy(emb[ok] @ head.fc.weight.t() + head.fc.bias, labels[ok])
    assert head(emb, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_sparse_grad_only_for_partial_fc():
    with pytest.raises(ConfigError, match="head.sparse_grad"):
        build_head("fc", create_margin("arcface"), 8, 10, sparse_grad=True)
    with pytest.raises(ConfigError, match="head.type"):
        build_head("nope", create_margin("arcface"), 8, 10)
