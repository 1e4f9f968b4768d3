import math

import pytest
import torch
from torch import nn

from facerec.config import OptimConfig
from facerec.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_multistep_with_warmup_values():
    cfg = OptimConfig(schedule="multistep", milestones=[2, 3], gamma=0.1, warmup_epochs=1)
    spe = 10  # steps per epoch
    f = [lr_factor(s, cfg, spe, 40) for s in range(40)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert f[10] == 1.0 and f[19] == 1.0
    assert f[20] == pytest.approx(0.1) and f[29] == pytest.approx(0.1)
    assert f[30] == pytest.approx(0.01)


def test_cosine_and_poly_end_points():
    cos = OptimConfig(schedule="cosine", warmup_epochs=0)
    assert lr_factor(0, cos, 10, 100) == pytest.approx(1.0)
    assert lr_factor(50, cos, 10, 100) == pytest.approx(0.5)
    assert lr_factor(100, cos, 10, 100) == pytest.approx(0.0, abs=1e-12)
    poly = OptimConfig(schedule="poly", warmup_epochs=0)
    assert lr_factor(50, poly, 10, 100) == pytest.approx(0.25)


def test_scheduler_follows_factor_and_resumes():
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.5, schedule="multistep", milestones=[1], warmup_epochs=0.5)
    opt = build_optimizer(cfg, model, nn.Linear(2, 2))
    sch = build_scheduler(opt, cfg, steps_per_epoch=4, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    expected = [0.5 * lr_factor(s, cfg, 4, 8) for s in range(8)]
    assert lrs == pytest.approx(expected)
    # A scheduler restored from a state dict continues at the same learning rate.
    opt2 = build_optimizer(cfg, model, nn.Linear(2, 2))
    sch2 = build_scheduler(opt2, cfg, 4, 8)
    sch2.load_state_dict(sch.state_dict())
    assert sch2.get_last_lr() == sch.get_last_lr()


def test_no_decay_groups():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Linear(4, 2))
    groups = param_groups(m, 5e-4, no_decay_norm_bias=True)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert decay == {id(m[0].weight), id(m[3].weight)}
    assert id(m[1].weight) in no_decay and id(m[2].weight) in no_decay and id(m[3].bias) in no_decay
    assert groups[1]["weight_decay"] == 0.0
    assert len(param_groups(m, 5e-4, no_decay_norm_bias=False)) == 1


def test_head_learning_rate():
    cfg = OptimConfig(lr=0.1, head_lr=1.0)
    opt = build_optimizer(cfg, nn.Linear(2, 2), nn.Linear(2, 3))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 1.0]


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 5e-4, False), (0.9, 1e-2, True)])
def test_sgd_equals_torch_sgd_on_dense_gradients(momentum, weight_decay, nesterov):
    from facerec.train.optim import SGD

    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = SGD(a.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for step in range(4):
        x = torch.randn(8, 4)
        for model, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_sgd_parameter_joining_late_starts_its_momentum_like_torch_sgd():
    """A parameter without a gradient in the first steps (a frozen-then-thawed layer) starts its
    momentum when its first gradient comes, beside parameters that carry one."""
    from facerec.train.optim import SGD

    torch.manual_seed(0)
    a, b = [nn.Parameter(torch.randn(5, 3)) for _ in range(2)]
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours = SGD([a, b], lr=0.1, momentum=0.9, weight_decay=1e-2)
    ref = torch.optim.SGD([a2, b2], lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in range(4):
        g = torch.randn(5, 3)
        for (x, y), opt in (((a, b), ours), ((a2, b2), ref)):
            opt.zero_grad(set_to_none=True)
            x.grad = g.clone()
            if step >= 2:
                y.grad = 2 * g
            opt.step()
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b, b2)


def test_sgd_sparse_rows_update_lazily_and_match_the_dense_rule():
    from facerec.train.optim import SGD

    torch.manual_seed(0)
    lr, mom, wd = 0.1, 0.9, 1e-2
    w0 = torch.randn(10, 3)
    p = nn.Parameter(w0.clone())
    opt = SGD([p], lr=lr, momentum=mom, weight_decay=wd, chunk_rows=2)  # chunks of 2 rows
    buf = torch.zeros(10, 3)
    ref = w0.clone()
    for rows in ([1, 4, 5], [4, 7], [0, 1, 2, 9]):
        r = torch.tensor(rows)
        vals = torch.randn(len(rows), 3)
        p.grad = torch.sparse_coo_tensor(r.unsqueeze(0), vals, p.shape, check_invariants=True)
        opt.step()
        d = vals + wd * ref[r]  # naive lazy rule: only the gradient's rows move
        buf[r] = mom * buf[r] + d
        ref[r] -= lr * buf[r]
        torch.testing.assert_close(p.detach(), ref)
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)
    assert torch.equal(p.detach()[[3, 6, 8]], w0[[3, 6, 8]])  # never in a gradient: untouched


def test_sparse_grad_needs_sgd_and_clipping_handles_sparse():
    from facerec.errors import ConfigError
    from facerec.heads import build_head, create_margin
    from facerec.train.optim import clip_gradients

    head = build_head("partial_fc", create_margin("arcface"), 4, 20, sample_rate=0.5, sparse_grad=True)
    with pytest.raises(ConfigError, match="head.sparse_grad"):
        build_optimizer(OptimConfig(name="adamw"), nn.Linear(2, 2), head)
    dense = nn.Parameter(torch.zeros(2))
    dense.grad = torch.tensor([3.0, 0.0])
    sparse = nn.Parameter(torch.zeros(5, 2))
    sparse.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([[4.0, 0.0]]), (5, 2), check_invariants=True)
    assert clip_gradients([dense, sparse], 1.0) == pytest.approx(5.0)
    torch.testing.assert_close(dense.grad, torch.tensor([0.6, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.grad.to_dense()[1], torch.tensor([0.8, 0.0]), atol=1e-6, rtol=0)
