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


class SGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay, equal to `torch.optim.SGD` (dampening 0) on dense
    gradients, that also takes row-sparse gradients (Partial FC's `sparse_grad`).

    For a sparse gradient over rows R (a COO tensor with sparse dim 1) only those rows are
    touched: d = g_R + wd * p_R; buf_R = momentum * buf_R + d; p_R -= lr * buf_R (Nesterov: d +
    momentum * buf_R). Rows outside R keep their weights and momentum ("lazy" momentum and
    weight decay, as the original Partial FC, whose optimiser only ever saw the sampled rows).
    The work is chunked so no dense temporary of the parameter's size is allocated.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 chunk_rows: int = 4096) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))
        self.chunk_rows = chunk_rows

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            dense: list[torch.Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    self._sparse_step(p, self.state[p], lr, mom, wd, nesterov)
                else:
                    dense.append(p)
            # dense gradients: torch's SGD kernel (one fused pass per tensor where it exists),
            # parameters that start their momentum now apart from those that carry one
            starting = [mom != 0 and "momentum_buffer" not in self.state[p] for p in dense]
            for start in (True, False):
                params = [p for p, s in zip(dense, starting) if s == start]
                if params:
                    self._dense_step(params, lr, mom, wd, nesterov)
        return loss

    def _dense_step(self, params: list[torch.Tensor], lr: float, mom: float, wd: float, nesterov: bool) -> None:
        from torch.optim.sgd import sgd

        bufs = [self.state[p].get("momentum_buffer") for p in params] if mom != 0 else []
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
        sgd(params, [p.grad for p in params], bufs, fused=fused, weight_decay=wd, momentum=mom, lr=lr,
            dampening=0.0, nesterov=nesterov, maximize=False)
        for p, buf in zip(params, bufs):
            self.state[p]["momentum_buffer"] = buf

    def _sparse_step(self, p: torch.Tensor, state: dict, lr: float, mom: float, wd: float, nesterov: bool) -> None:
        grad = p.grad
        if grad.sparse_dim() != 1:
            raise ValueError("facerec SGD takes row-sparse gradients (sparse_dim 1) only")
        rows, values = grad._indices()[0], grad._values()
        # Partial FC's gradient has sorted unique rows, but autograd's accumulation drops the
        # "coalesced" flag; coalescing again would copy every value, so check the rows instead.
        if not grad.is_coalesced() and rows.numel() > 1 and not bool((rows[1:] > rows[:-1]).all()):
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
        buf = state.get("momentum_buffer")
        if mom != 0 and buf is None:
            buf = state["momentum_buffer"] = torch.zeros_like(p)
        for s in range(0, rows.numel(), self.chunk_rows):
            r = rows[s : s + self.chunk_rows]
            d = values[s : s + self.chunk_rows].clone()
            if wd != 0:
                d.add_(p[r], alpha=wd)
            if mom != 0:
                b = buf[r].mul_(mom).add_(d)
                buf[r] = b
                d = d.add_(b, alpha=mom) if nesterov else b
            p.index_add_(0, r, d, alpha=-lr)


def build_optimizer(cfg: OptimConfig, backbone: nn.Module, head: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over backbone and head; the head may have its own learning rate."""
    groups = param_groups(backbone, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.lr)
    groups += param_groups(head, cfg.weight_decay, cfg.no_decay_norm_bias, cfg.head_lr if cfg.head_lr is not None else cfg.lr)
    if cfg.name == "sgd":
        return SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if getattr(head, "sparse_grad", False):
        raise ConfigError(f"config key 'head.sparse_grad': a sparse Partial FC gradient needs optim.name=sgd, "
                          f"not {cfg.name!r}")
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


def grad_values(g: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: itself if dense, the non-zero rows if row-sparse."""
    return g.coalesce().values() if g.is_sparse else g


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None,
                   sharded: Iterable[torch.Tensor] = ()) -> float | None:
    """Scale all gradients so their global L2 norm is at most `max_norm`; returns the norm
    before clipping. Handles row-sparse gradients (their stored values). `sharded` parameters
    (Partial FC's centres, different on every rank) count with their squared norms summed over
    the ranks, so every rank computes the same global norm."""
    if max_norm is None or max_norm <= 0:
        return None
    params = list(params)
    shard_ids = {id(p) for p in sharded}

    def sq(g: torch.Tensor) -> torch.Tensor:
        return grad_values(g).float().pow(2).sum()

    zero = torch.zeros((), dtype=torch.float32)
    local = sum((sq(p.grad).cpu() for p in params if p.grad is not None and id(p) not in shard_ids), zero)
    shard = sum((sq(p.grad).cpu() for p in params if p.grad is not None and id(p) in shard_ids), zero.clone())
    if shard_ids and torch.distributed.is_available() and torch.distributed.is_initialized():
        dev = next((p.grad.device for p in params if id(p) in shard_ids and p.grad is not None), torch.device("cpu"))
        shard = shard.to(dev)
        torch.distributed.all_reduce(shard)
        shard = shard.cpu()
    total = float((local + shard).sqrt())
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                p.grad = p.grad.coalesce() * scale
            else:
                p.grad.mul_(scale)
    return total
