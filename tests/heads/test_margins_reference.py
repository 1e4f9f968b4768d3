import math

import pytest
import torch

from facerec.heads import ArcFace, CombinedMargin, CosFace, FullFC, SphereFace, create_margin, list_margins


def reference_target(name, c, s, m):
    """Float64 per-sample reference of each margin's target logit (before scaling)."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    if name == "arcface":
        return math.cos(theta + m) if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m
    if name == "cosface":
        return c - m
    if name == "sphereface":
        return math.cos(m * theta)
    if name == "combined":  # defaults m1=1, m2=m, m3=0
        return math.cos(theta + m)
    raise KeyError(name)


def insightface_combined(logits, labels, s, m1, m2, m3):
    """insightface arcface_torch CombinedMarginLoss forward (in-place arccos under no_grad)."""
    logits = logits.clone()
    idx = torch.where(labels != -1)[0]
    tgt = logits[idx, labels[idx]]
    if m1 == 1.0 and m3 == 0.0:
        with torch.no_grad():
            tgt = tgt.arccos()
            logits.arccos_()
            logits[idx, labels[idx]] = tgt + m2
            logits.cos_()
        return logits * s
    logits[idx, labels[idx]] = tgt - m3
    return logits * s


COSINES = torch.tensor([1.0, 1 - 1e-7, 0.999, 0.7, 0.3, 0.0, -0.3, -0.7, -0.999, -1 + 1e-7, -1.0], dtype=torch.float64)


def grid(rows=11, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(rows, classes, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.arange(rows) % classes
    cos[torch.arange(rows), labels] = COSINES[:rows]
    return cos, labels


COMBINED_FAMILY = ["arcface", "combined", "cosface", "sphereface"]


def test_every_registered_margin_has_a_reference_test():
    adaptive = ["adaface", "curricularface", "magface"]  # tests/heads/test_adaptive_margins.py
    assert sorted(list_margins()) == sorted(COMBINED_FAMILY + adaptive)


@pytest.mark.parametrize("name", COMBINED_FAMILY)
def test_forward_matches_float64_reference(name):
    s, m = 30.0, (0.5 if name != "sphereface" else 1.35)
    margin = create_margin(name, s=s, m=m) if name != "combined" else CombinedMargin(s=s, m1=1.0, m2=m, m3=0.0)
    cos, labels = grid()
    out = margin(cos.float(), labels)
    for i in range(cos.shape[0]):
        for j in range(cos.shape[1]):
            c = float(cos[i, j].float())
            ref = s * (reference_target(name, c, s, m) if j == labels[i] else c)
            assert out[i, j].item() == pytest.approx(ref, abs=2e-4 * s), (i, j, c)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (1.0, 0.3, 0.0), (1.0, 0.0, 0.35), (1.0, 2.8, 0.0)])
def test_combined_equals_insightface_including_theta_plus_m_above_pi(m1, m2, m3):
    cos, labels = grid(seed=1)
    labels[2] = -1  # ignored row: no margin
    ours = CombinedMargin(64.0, m1, m2, m3)(cos.float(), labels)
    ref = insightface_combined(cos.float(), labels, 64.0, m1, m2, m3)
    torch.testing.assert_close(ours, ref, atol=1e-5 * 64, rtol=1e-5)


def test_exact_gradient_matches_analytic_and_straight_through_is_identity():
    cos = torch.tensor([[0.7, 0.1], [-0.2, 0.4]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    s, m = 10.0, 0.5
    ArcFace(s, m)(cos, labels).sum().backward()
    c = 0.7  # d/dc cos(acos c + m) = cos m + c sin m / sqrt(1 - c^2)
    expected = s * (math.cos(m) + c * math.sin(m) / math.sqrt(1 - c * c))
    assert cos.grad[0, 0].item() == pytest.approx(expected, rel=1e-4)
    assert cos.grad[0, 1].item() == pytest.approx(s)
    cos.grad = None
    ArcFace(s, m, gradient="straight_through")(cos, labels).sum().backward()
    torch.testing.assert_close(cos.grad, torch.full_like(cos, s))


def test_gradcheck_exact_mode_inside_the_domain():
    cos = torch.tensor([[0.6, -0.2, 0.1], [0.3, 0.8, -0.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1])
    for margin in (ArcFace(8.0, 0.4), CosFace(8.0, 0.35), SphereFace(8.0, 1.5), CombinedMargin(8.0, 1.0, 0.3, 0.1)):
        assert torch.autograd.gradcheck(lambda x: margin(x, labels).double(), (cos,), eps=1e-6, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list_margins())
def test_no_nan_or_inf_at_theta_0_and_pi(name, dtype):
    cos = COSINES.to(dtype).view(-1, 1).repeat(1, 3).clone().requires_grad_(True)
    labels = torch.zeros(cos.shape[0], dtype=torch.long)
    norms = torch.linspace(0.5, 150.0, cos.shape[0])  # AdaFace / MagFace take the embedding norms
    out = create_margin(name)(cos, labels, norms)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad.float()).all()


def test_full_fc_loss_in_fp32_under_autocast_and_ignores_minus_one():
    torch.manual_seed(0)
    head = FullFC(ArcFace(16.0, 0.5), 8, 5)
    emb = torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, -1, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(emb.bfloat16(), labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    ref = torch.nn.functional.cross_entropy(
        head.margin(head.fc(emb.bfloat16().float()), labels)[[0, 1, 3]], labels[[0, 1, 3]])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def reference_target_grad(name, c, m):
    """d target / d cos in float64; inf at theta = 0, pi where d acos / dc is (not compared)."""
    if abs(c) >= 1 - 1e-5 and not (name == "cosface" or (name == "arcface" and c <= math.cos(math.pi - m))):
        return math.inf
    theta = math.acos(c)
    if name == "cosface" or (name == "arcface" and c <= math.cos(math.pi - m)):
        return 1.0
    m1, m2 = (m, 0.0) if name == "sphereface" else (1.0, m)
    return m1 * math.sin(m1 * theta + m2) / math.sin(theta)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4), (torch.bfloat16, 8e-3),
                                        (torch.float16, 1e-3)])
@pytest.mark.parametrize("name", COMBINED_FAMILY)
def test_exact_gradient_matches_float64_reference(name, dtype, rtol):
    s, m = 8.0, (0.5 if name != "sphereface" else 1.35)
    margin = create_margin(name, s=s, m=m) if name != "combined" else CombinedMargin(s=s, m1=1.0, m2=m, m3=0.0)
    cos, labels = grid()
    x = cos.to(dtype).clone().requires_grad_(True)
    margin(x, labels).sum().backward()
    assert torch.isfinite(x.grad.float()).all()
    rounded = cos.to(dtype).double()
    for i in range(cos.shape[0]):
        for j in range(cos.shape[1]):
            c = float(rounded[i, j])
            ref = s * (reference_target_grad(name, c, m) if j == labels[i] else 1.0)
            if math.isfinite(ref):
                assert float(x.grad[i, j]) == pytest.approx(ref, rel=rtol, abs=1e-4 * s), (i, j, c)
