"""Optimisers with weight-decay groups, and learning-rate schedules stepped per iteration.

Schedules are pure functions of the step (`lr_factor`), so a resumed run gets exactly the
learning rate an uninterrupted one would have; milestones and warmup are given in epochs
(the seed's convention) and converted with the number of steps per epoch.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from facerec.config import OptimConfig
from facerec.errors import ConfigError

_NO_DECAY_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def param_groups(module: nn.Module, weight_decay: float, no_decay_norm_bias: bool, lr: float | None = None) -> list[dict]:
    """Split `module`'s trainable parameters into decay / no-decay groups.

    With `no_decay_norm_bias`, biases and the parameters of norm layers and PReLU get no weight
    decay (decaying a BN scale or a PReLU slope towards zero only hurts).
    """
    decay, no_decay = [], []
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if no_decay_norm_bias and (isinstance(mod, _NO_DECAY_TYPES) or name == "bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = []
    for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            g: dict = {"params": params, "weight_decay": wd}
            if lr is not None:
                g["lr"] = lr
            groups.append(g)
    return groups


def build_optimizer(cfg: OptimConfig, backbone: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over backbone and head; the head may have its own learning rate."""
    groups = param_groups(backbone, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.lr)
    groups += param_groups(head, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.head_lr if cfg.head_lr is not None else cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"config key 'optim.name': unknown optimiser {cfg.name!r} (sgd, adamw)")


def lr_factor(step: int, cfg: OptimConfig, steps_per_epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step `step` (0-based)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        bounds = [int(round(m * steps_per_epoch)) for m in cfg.milestones]
        return cfg.gamma ** sum(step >= b for b in bounds)
    span = max(1, total_steps - warmup)
    t = min(1.0, (step - warmup) / span)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "poly":
        return (1.0 - t) ** 2
    raise ConfigError(f"config key 'optim.schedule': unknown schedule {cfg.schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR following `lr_factor` (its state is just the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch, total_steps)
    )


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> float | None:
    if max_norm is None or max_norm <= 0:
        return None
    return float(torch.nn.utils.clip_grad_norm_(list(params), max_norm))
