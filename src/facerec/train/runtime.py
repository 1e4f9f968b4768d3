"""Device, precision and process ranks in one small object (named like Lightning Fabric's).

Distributed settings come from torchrun's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`);
no process group exists when the world size is 1. Autocast wraps the step here, never
inside a model's `forward`; `GradScaler` is enabled for fp16 only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator

import torch

from facerec.errors import ConfigError


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 is the fast path."""
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        caps = ""
    if "AMX" in caps.upper():
        return True
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn "auto" into fp32/bf16/fp16 for `device`; reject names that are none of these.

    fp16 also runs on CPU (fp16 autocast and `GradScaler("cpu")`), emulated and slow on CPUs
    without native fp16 arithmetic, so "auto" never picks it there.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"config key 'train.precision' must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


@dataclass
class Runtime:
    """Where and how the step runs: device, precision, rank and world size."""

    device: torch.device
    precision: str = "fp32"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    scaler: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.scaler is None:  # loss scaling for fp16 only; a no-op scaler otherwise
            self.scaler = torch.amp.GradScaler(self.device.type, enabled=(self.precision == "fp16"))

    @classmethod
    def from_config(cls, train: Any) -> "Runtime":
        """From torchrun's environment with a config's `train` section (precision, timeout)."""
        minutes = train.dist_timeout_minutes
        if minutes is not None and not minutes > 0:
            raise ConfigError(f"config key 'train.dist_timeout_minutes' must be a positive number of minutes, "
                              f"got {minutes}")
        return cls.from_env(train.precision, timeout_minutes=minutes)

    @classmethod
    def from_env(cls, precision: str = "auto", device: str | None = None,
                 timeout_minutes: float | None = None) -> "Runtime":
        """Build from torchrun's environment; initialises the process group when world size > 1.
        `timeout_minutes` bounds every collective wait (torch's default when None: 30 min on
        gloo, 10 on NCCL), the evaluation barrier included, where ranks wait for rank 0."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            timeout = None if timeout_minutes is None else timedelta(minutes=timeout_minutes)
            torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout)
        prec = resolve_precision(precision, dev)
        return cls(device=dev, precision=prec, rank=rank, local_rank=local_rank, world_size=world)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and torch.distributed.is_initialized()

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Mixed-precision region for the forward pass (a no-op in fp32)."""
        dtype = self.amp_dtype
        if dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            yield

    @property
    def grad_scale(self) -> float:
        """The fp16 loss scale now (1.0 in fp32/bf16, where no scaling happens)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of `loss`, scaled by the fp16 loss scale (plain backward otherwise)."""
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale, before they are checked or clipped."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Take the optimiser step on unscaled, finite gradients and update the loss scale."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def skip_step(self) -> None:
        """End an iteration whose step is skipped (non-finite loss or gradient somewhere).

        The fp16 loss scale backs off on every rank, as GradScaler does after an overflow, also
        on a rank whose own gradients were finite (Partial FC's shards differ per rank): the
        ranks' scales must stay equal, because backbone gradients are summed across ranks
        before they are unscaled.
        """
        s = self.scaler
        if not s.is_enabled():
            return
        state = s.state_dict()
        state["scale"] = state["scale"] * s.get_backoff_factor()
        state["_growth_tracker"] = 0
        s.update(new_scale=state["scale"])  # also drops this iteration's inf checks
        s.load_state_dict(state)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_reduce_mean(self, value: float) -> float:
        """Mean of a scalar over ranks (identity with one process)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def all_true(self, flag: bool) -> bool:
        """True on every rank iff `flag` is True on every rank (one decision for collective steps)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device if self.device.type == "cuda" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
        return bool(t.item())

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """`obj` of rank `src` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere); [obj] with one process."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.distributed:
            torch.distributed.destroy_process_group()
