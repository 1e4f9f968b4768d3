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
