"""Batch normalisation over the global batch of all processes, on the CPU (gloo) as on CUDA.

With per-process statistics, N processes with batch B/N each normalise every image by the
statistics of its own slice, so the run trains differently from one process with batch B.
Synchronised BatchNorm (Ioffe & Szegedy 2015, statistics over the whole mini-batch; synchronised
across devices as in Peng et al., "MegDet", CVPR 2018) computes them over the global batch:
N processes then take the step one process would. `torch.nn.SyncBatchNorm` runs on CUDA only;
`convert_sync_batchnorm` uses it there and `SyncBatchNorm1d/2d` (below) elsewhere.

The CPU version combines each rank's mean and sum of squared deviations with the parallel
variance formula (Chan, Golub & LeVeque 1979) in one all-reduce per layer and per pass, and keeps
the statistics and the gradient in fp32 whatever the autocast dtype of its input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def _world(group: Any) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean and (biased) var over the
    global batch; updates the running statistics in place (unbiased variance, as BatchNorm)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group):  # noqa: D417
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = xf.numel() // channels
        if count:
            var, mean = torch.var_mean(xf, dim=dims, correction=0)
        else:  # an empty slice contributes nothing
            var = mean = xf.new_zeros(channels)
        rows = xf.new_zeros(_world(group), 2 * channels + 1)  # a row per rank; zeros add exactly
        rank = dist.get_rank(group)
        rows[rank, :channels] = mean
        rows[rank, channels:-1] = var * count
        rows[rank, -1] = count
        dist.all_reduce(rows, group=group)
        counts = rows[:, -1:]
        total = float(counts.sum())
        if total < 2:
            raise ValueError(f"SyncBatchNorm needs more than 1 value per channel over all ranks, got "
                             f"input of size {tuple(x.shape)} in a global batch of {total:g} values per channel")
        mean = (rows[:, :channels] * counts).sum(0) / total
        sq_dev = (rows[:, channels:-1] + counts * (rows[:, :channels] - mean) ** 2).sum(0)
        var = sq_dev / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((sq_dev / (total - 1)).to(running_var.dtype), alpha=momentum)
        invstd = torch.rsqrt(var + eps)
        shape = (1, channels) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(shape)) * invstd.view(shape)
        if weight is not None:
            y = y * weight.float().view(shape) + bias.float().view(shape)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total, ctx.group = total, group
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, channels) + (1,) * (x.dim() - 2)
        dyf = dy.float()
        xhat = (x.float() - mean.view(shape)) * invstd.view(shape)
        local = torch.cat([dyf.sum(dims), (dyf * xhat).sum(dims)])
        sums = local.clone()
        dist.all_reduce(sums, group=ctx.group)  # every rank, whatever it needs, or the group hangs
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight.float()
            mean_dy, mean_dy_xhat = (sums / ctx.total).view(2, channels)
            grad_x = ((dyf - mean_dy.view(shape) - xhat * mean_dy_xhat.view(shape)) * scale.view(shape)).to(x.dtype)
        # the affine gradients are this rank's share: DDP reduces them like every other parameter's
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = local[channels:].to(weight.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            grad_b = local[:channels].to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


class _SyncStatistics:
    """Mixin over a BatchNorm class: in training, with several processes, global statistics."""

    process_group: Any = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world(self.process_group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average, as BatchNorm's
                momentum = 1.0 / float(self.num_batches_tracked)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var, momentum,
                                      self.eps, self.process_group)


class SyncBatchNorm1d(_SyncStatistics, nn.BatchNorm1d):
    """`nn.BatchNorm1d` whose training statistics span every process of the group."""


class SyncBatchNorm2d(_SyncStatistics, nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training statistics span every process of the group."""


_SYNCED = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d}


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu", process_group: Any = None) -> nn.Module:
    """`module` with every BatchNorm1d/2d synchronised across `process_group` (default: all
    ranks). The new layers share the old ones' parameters and buffers, so an optimiser, a state
    dict and a checkpoint see the same tensors under the same names. On CUDA this is
    `torch.nn.SyncBatchNorm`; elsewhere SyncBatchNorm1d/2d. Children are replaced in place."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    synced = _SYNCED.get(type(module))
    if synced is not None:
        new = synced(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(module, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.process_group = process_group
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device, process_group))
    return module
