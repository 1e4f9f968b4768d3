"""CurricularFace, AdaFace and MagFace against naive float64 per-sample references."""

import math

import pytest
import torch

from facerec.heads import FullFC, create_margin

S = 16.0
COSINES = [1.0, 1 - 1e-7, 0.999, 0.7, 0.3, 0.0, -0.3, -0.7, -0.999, -1 + 1e-7, -1.0]


def arc_target(c, m):
    """ArcFace target with the fallback past theta + m > pi (insightface, the papers' code)."""
    if c > math.cos(math.pi - m):
        return math.cos(math.acos(c) + m)
    return c - math.sin(math.pi - m) * m


def arc_target_grad(c, m):
    if abs(c) >= 1 - 1e-5:
        return math.inf  # theta = 0: not compared (see assert_matches)
    if c > math.cos(math.pi - m):
        return math.cos(m) + c * math.sin(m) / math.sqrt(1 - c * c)
    return 1.0


def curricular_reference(cos, labels, m, t_prev, momentum):
    """Returns (logits / s, d logits / d cosine elementwise, new t), per sample in float64."""
    rows = [i for i in range(len(labels)) if labels[i] >= 0]
    t = t_prev
    if rows:
        t = (1 - momentum) * t_prev + momentum * sum(cos[i][labels[i]] for i in rows) / len(rows)
    out = [row[:] for row in cos]
    grad = [[1.0] * len(row) for row in cos]
    for i in rows:
        y = labels[i]
        c_y = cos[i][y]
        phi = math.cos(math.acos(c_y) + m)  # the hard-negative threshold: cos(theta + m)
        for j, c in enumerate(cos[i]):
            if j == y:
                out[i][j] = arc_target(c, m)
                grad[i][j] = arc_target_grad(c, m)
            elif c > phi:
                out[i][j] = c * (t + c)
                grad[i][j] = t + 2 * c
    return out, grad, t


def adaface_reference(cos, labels, norms, m, h, mean_prev, std_prev, alpha):
    n = [min(max(v, 0.001), 100.0) for v in norms]
    mu = sum(n) / len(n)
    sd = math.sqrt(sum((v - mu) ** 2 for v in n) / (len(n) - 1))
    mean = (1 - alpha) * mean_prev + alpha * mu
    std = (1 - alpha) * std_prev + alpha * sd
    out = [row[:] for row in cos]
    grad = [[1.0] * len(row) for row in cos]
    for i, y in enumerate(labels):
        if y < 0:
            continue
        z = min(max((n[i] - mean) / (std + 1e-3) * h, -1.0), 1.0)
        theta = math.acos(cos[i][y])
        ang = min(max(theta - m * z, 0.0), math.pi)
        out[i][y] = math.cos(ang) - (m + m * z)
        inside = 0.0 < theta - m * z < math.pi
        grad[i][y] = (math.sin(ang) / math.sin(theta) if abs(cos[i][y]) < 1 - 1e-5 else math.inf) if inside\
            else 0.0
    return out, grad, mean, std


def magface_margin(norm, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8):
    a = min(max(norm, l_a), u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_reference(cos, labels, norms):
    out = [row[:] for row in cos]
    grad = [[1.0] * len(row) for row in cos]
    for i, y in enumerate(labels):
        if y >= 0:
            m = magface_margin(norms[i])
            out[i][y] = arc_target(cos[i][y], m)
            grad[i][y] = arc_target_grad(cos[i][y], m)
    return out, grad


TARGETS = [1.0, 1 - 1e-7, 0.999, 0.95, 0.6, 0.2, 0.0, -0.4, -0.9, -0.999, -1 + 1e-7, -1.0]  # theta ~ 0 .. pi


def sample(classes=5, seed=0):
    rows = len(TARGETS)
    g = torch.Generator().manual_seed(seed)
    cos = torch.rand(rows, classes, generator=g, dtype=torch.float64) * 1.6 - 0.8
    labels = torch.arange(rows) % classes
    cos[torch.arange(rows), labels] = torch.tensor(TARGETS, dtype=torch.float64)
    labels[4] = -1
    norms = torch.linspace(2.0, 130.0, rows, dtype=torch.float64)
    return cos, labels, norms


def run(margin, cos, labels, norms, dtype=torch.float64):
    x = cos.to(dtype).clone().requires_grad_(True)
    out = margin(x, labels, norms)
    out.sum().backward()
    return out.double(), x.grad.double()


def as_lists(cos, labels, norms):
    return cos.tolist(), labels.tolist(), norms.tolist()


DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
# Forward: the margins compute in fp32 (float64 stays float64), so against the reference on the
# same rounded input only fp32 rounding is left. Gradients come back in the input's dtype.
FWD_TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}
GRAD_RTOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def assert_matches(out, grad, ref, ref_grad, dtype):
    torch.testing.assert_close(out, S * torch.tensor(ref, dtype=torch.float64), atol=FWD_TOL[dtype] * S * 10, rtol=0)
    assert torch.isfinite(grad).all()
    rows = torch.arange(grad.shape[0])
    assert (grad[rows, rows % grad.shape[1]].abs() > 0).all()  # the target keeps a gradient even at theta = 0, pi
    # d acos(c) / dc is infinite at theta = 0, pi: there the margins differentiate at a cosine
    # clamped 1e-6 inside, so the analytic reference is compared on the open interval only.
    ref_grad = S * torch.tensor(ref_grad, dtype=torch.float64)
    inner = torch.isfinite(ref_grad)  # inputs rounded to exactly +-1 (bf16 rounds 0.999 to 1) are left out
    assert inner.sum() >= grad.numel() - 6
    torch.testing.assert_close(grad[inner], ref_grad[inner], atol=1e-4 * S, rtol=GRAD_RTOL[dtype])


@DTYPES
def test_curricularface_forward_grad_and_t_update(dtype):
    cos, labels, norms = sample()
    cos = cos.to(dtype).double()  # the reference sees the same rounded input
    margin = create_margin("curricularface", s=S, m=0.5, momentum=0.3)
    margin.t.fill_(0.2)
    out, grad = run(margin, cos, labels, norms, dtype)
    ref, ref_grad, t = curricular_reference(*as_lists(cos, labels, norms)[:2], 0.5, 0.2, 0.3)
    assert margin.t.item() == pytest.approx(t, abs=1e-6)
    assert_matches(out, grad, ref, ref_grad, dtype)


@DTYPES
def test_adaface_forward_grad_and_running_stats(dtype):
    cos, labels, norms = sample()
    cos = cos.to(dtype).double()
    margin = create_margin("adaface", s=S, m=0.4, h=0.333, t_alpha=0.5)
    out, grad = run(margin, cos, labels, norms, dtype)
    ref, ref_grad, mean, std = adaface_reference(*as_lists(cos, labels, norms), 0.4, 0.333, 20.0, 100.0, 0.5)
    assert margin.batch_mean.item() == pytest.approx(mean, rel=1e-6)
    assert margin.batch_std.item() == pytest.approx(std, rel=1e-6)
    assert_matches(out, grad, ref, ref_grad, dtype)


@DTYPES
def test_magface_forward_and_grad(dtype):
    cos, labels, norms = sample()
    cos = cos.to(dtype).double()
    margin = create_margin("magface", s=S)
    out, grad = run(margin, cos, labels, norms, dtype)
    ref, ref_grad = magface_reference(*as_lists(cos, labels, norms))
    assert_matches(out, grad, ref, ref_grad, dtype)


def test_magface_regulariser_and_margin_of_norm():
    margin = create_margin("magface", s=S, lambda_g=35.0)
    norms = torch.tensor([5.0, 10.0, 60.0, 110.0, 200.0], dtype=torch.float64)
    a = norms.clamp(10.0, 110.0)
    expected = 35.0 * (a / 110.0**2 + 1.0 / a).mean()
    assert margin.extra_loss(norms).item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(margin.margin_of(norms).double(),
                               torch.tensor([magface_margin(v) for v in norms.tolist()], dtype=torch.float64))


def test_gradcheck_inside_the_domain():
    cos = torch.tensor([[0.6, -0.2, 0.1], [0.3, 0.8, -0.5], [0.1, 0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2])
    norms = torch.tensor([15.0, 40.0, 90.0], dtype=torch.float64, requires_grad=True)
    for name in ("curricularface", "adaface"):
        margin = create_margin(name, s=8.0).eval()  # frozen statistics: a pure function
        assert torch.autograd.gradcheck(lambda x: margin(x, labels, norms.detach()), (cos,), eps=1e-6, atol=1e-4)
    mag = create_margin("magface", s=8.0)
    assert torch.autograd.gradcheck(lambda x, n: mag(x, labels, n), (cos, norms), eps=1e-6, atol=1e-4)
    assert torch.autograd.gradcheck(mag.extra_loss, (norms,), eps=1e-6, atol=1e-4)


def test_running_statistics_change_only_in_training_mode():
    cos, labels, norms = sample()
    cur = create_margin("curricularface").eval()
    ada = create_margin("adaface").eval()
    cur(cos, labels, norms)
    ada(cos, labels, norms)
    assert cur.t.item() == 0.0 and ada.batch_mean.item() == 20.0 and ada.batch_std.item() == 100.0
    cur.train()(cos, labels, norms)
    ada.train()(cos, labels, norms)
    assert cur.t.item() != 0.0 and ada.batch_mean.item() != 20.0
    assert {"t"} <= set(cur.state_dict()) and {"batch_mean", "batch_std"} <= set(ada.state_dict())


@pytest.mark.parametrize("name", ["adaface", "magface"])
def test_norm_based_margins_refuse_missing_norms(name):
    cos, labels, _ = sample()
    with pytest.raises(ValueError, match="norms"):
        create_margin(name)(cos, labels)


def test_full_fc_passes_pre_normalisation_norms_and_adds_magface_regulariser():
    torch.manual_seed(0)
    head = FullFC(create_margin("magface", s=S), 8, 5)
    emb = (torch.randn(6, 8) * 20).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, -1, 4, 0])
    loss = head(emb, labels)
    norms = emb.detach().norm(dim=1)
    logits = head.margin(head.fc(emb.detach()), labels, norms)
    ok = labels >= 0
    expected = torch.nn.functional.cross_entropy(logits[ok], labels[ok]) + head.margin.extra_loss(norms[ok])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad[3].abs().sum() == 0  # the ignored row has no gradient
