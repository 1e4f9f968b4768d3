"""Batch normalisation over the global batch of all processes, on the CPU (gloo) as on CUDA.

With per-process statistics, N processes with batch B/N each normalise every image by the
statistics of its own slice, so the run trains differently from one process with batch B.
Synchronised BatchNorm (Ioffe & Szegedy 2015, statistics over the whole mini-batch; synchronised
across devices as in Peng et al., "MegDet", CVPR 2018) computes them over the global batch:
N processes then take the step one process would. `torch.nn.SyncBatchNorm` runs on CUDA only;
`convert_sync_batchnorm` uses it there and `SyncBatchNorm1d/2d` (below) elsewhere.

The CPU version combines each rank's mean and sum of squared deviations with the parallel
variance formula (Chan, Golub & LeVeque 1979) in one all-reduce per layer and per pass, and keeps
the statistics in fp32 whatever the autocast dtype of its input.
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
    global batch; updates the running statistics in place (unbiased variance, as BatchNorm).

    Built from torch's own CPU batch-norm kernels (channels_last and bf16 aware): the local
    statistics from its statistics kernel (fp32 input) or a training-mode forward (fp32
    statistics of a bf16/fp16 input), the output from an inference-mode forward with the global
    statistics, and the backward from an inference-mode backward plus the global statistics'
    share of the gradient, a per-channel k1 * x + k0."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group):  # noqa: D417
        channels = x.shape[1]
        scale = weight if weight is not None else x.new_ones(channels, dtype=torch.float32)
        count = x.numel() // channels
        if count and x.dtype == torch.float32:  # stats only (it returns them in x's dtype)
            mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        elif count:  # fp32 statistics of a bf16/fp16 input; eps 0: var = invstd**-2 (0 where inf)
            _, mean, invstd = torch.native_batch_norm(x, scale, None, None, None, True, 0.0, 0.0)
            mean, var = mean.float(), invstd.float().pow(-2)
        else:  # an empty slice contributes nothing
            mean = var = x.new_zeros(channels, dtype=torch.float32)
        rows = mean.new_zeros(_world(group), 2 * channels + 1)  # a row per rank; zeros add exactly
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
        y = torch.batch_norm(x, scale, bias, mean, var, False, 0.0, eps, False)
        ctx.save_for_backward(x, scale, mean, var)
        ctx.total, ctx.eps, ctx.group, ctx.affine = total, eps, group, weight is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, mean, var = ctx.saved_tensors
        channels = x.shape[1]
        # with frozen statistics: dx = dy * w * invstd, and this rank's sum(dy), sum(dy * xhat)
        grad_x, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy.contiguous(memory_format=_memory_format(x)), x, scale, mean, var, None, None, False, ctx.eps,
            [True, True, True])
        sums = torch.cat([sum_dy, sum_dy_xhat]).float()
        dist.all_reduce(sums, group=ctx.group)  # every rank, whatever it needs, or the group hangs
        mean_dy, mean_dy_xhat = (sums / ctx.total).view(2, channels)
        invstd = torch.rsqrt(var + ctx.eps)
        k1 = -scale.float() * invstd * invstd * mean_dy_xhat  # the statistics' share of the gradient:
        k0 = -scale.float() * invstd * mean_dy - k1 * mean  # - w * invstd * (mean(dy) + xhat * mean(dy xhat))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        if grad_x.dtype == torch.float32:
            grad_x = grad_x.addcmul_(x, k1.view(shape)).add_(k0.view(shape))
        else:  # the correction in fp32, rounded once
            grad_x = grad_x.float().addcmul_(x.float(), k1.view(shape)).add_(k0.view(shape)).to(x.dtype)
        # the affine gradients are this rank's share: DDP reduces them like every other parameter's
        grad_w = sum_dy_xhat if ctx.affine and ctx.needs_input_grad[1] else None
        grad_b = sum_dy if ctx.affine and ctx.needs_input_grad[2] else None
        return grad_x if ctx.needs_input_grad[0] else None, grad_w, grad_b, None, None, None, None, None


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class _SyncStatistics:
    """Mixin over a BatchNorm class: in training, with several processes, global statistics."""

    process_group: Any = None

    # torch.compile runs the layer as it is (its collectives break the graph anyway); traced,
    # every layer size was one more recompilation of this frame, past dynamo's limit
    @torch.compiler.disable
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
