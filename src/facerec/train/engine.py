"""The training loop as plain functions: build the pieces, `train_one_epoch`, `evaluate`, `train`.

`train(cfg)` wires them: data, backbone, head, optimiser and schedule, precision, periodic
verification with best-so-far tracking, checkpoints, console/JSONL logging. `tune=True` (the
seed's "parameter adjustment mode") trains and evaluates but writes nothing to the run
directory.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facerec.config import Config, save_config
from facerec.errors import FacerecError
from facerec.train import checkpoint as ckpt
from facerec.train.data import TrainData, build_train_data, EpochSampler
from facerec.train.optim import build_optimizer, build_scheduler, clip_gradients, grad_values
from facerec.train.runtime import Runtime
from facerec.train.sync_batchnorm import convert_sync_batchnorm
from facerec.train.trackers import (Console, JsonlLogger, MultiLogger, TensorBoardLogger, Throughput, VisdomLogger,
                                     format_duration)


class TrainingDiverged(FacerecError, RuntimeError):
    """Too many consecutive steps produced a NaN/Inf loss or gradient."""


@dataclass
class TrainState:
    """Where the run is: counted in optimiser steps, batches and epochs."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    bad_steps: int = 0
    consecutive_bad: int = 0
    best: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path | None
    steps: int
    epochs: float
    final_loss: float
    images_per_second: float
    wall_time: float
    bad_steps: int
    val: dict[str, dict[str, float]]
    best: dict[str, float]
    checkpoint: Path | None
    model: nn.Module = field(repr=False)
    head: nn.Module = field(repr=False)


def build_backbone(cfg: Config) -> nn.Module:
    """The backbone of `cfg.model`; with `model.pretrained`, those weights and their
    preprocessing contract (the architecture must be the configured one)."""
    from facerec.models import create_model

    if cfg.model.pretrained:
        from facerec.errors import ConfigError
        from facerec.models import load_checkpoint
        from facerec.models.registry import MODELS, _ensure_builtin

        model = load_checkpoint(cfg.model.pretrained)
        _ensure_builtin()
        want = MODELS.resolve(cfg.model.name)
        got_size = tuple(model.preprocess.input_size)
        if model.arch != want or got_size != tuple(cfg.model.input_size) or \
                model.preprocess.embedding_size != cfg.model.embedding_size:
            raise ConfigError(f"config key 'model.pretrained': {cfg.model.pretrained} is {model.arch} "
                              f"{got_size[0]}x{got_size[1]} -> {model.preprocess.embedding_size}-d, the config says "
                              f"{want} {cfg.model.input_size[0]}x{cfg.model.input_size[1]} -> "
                              f"{cfg.model.embedding_size}-d")
        return model.train()
    return create_model(
        cfg.model.name,
        embedding_size=cfg.model.embedding_size,
        input_size=tuple(cfg.model.input_size),
        **cfg.model.options,
    )


def build_classifier(cfg: Config, num_classes: int, world_size: int = 1) -> nn.Module:
    """The head of `cfg.head`. With several processes, "fc" becomes Partial FC with sample rate 1:
    the same softmax over every class, with the centres sharded across the ranks."""
    from facerec.heads import build_head, create_margin

    kind, rate = cfg.head.type, cfg.head.sample_rate
    if kind == "fc" and world_size > 1:
        kind, rate = "partial_fc", 1.0
    margin = create_margin(cfg.head.margin, s=cfg.head.s, m=cfg.head.m, **cfg.head.options)
    return build_head(kind, margin, cfg.model.embedding_size, num_classes, sample_rate=rate,
                      sub_centers=cfg.head.sub_centers, sparse_grad=cfg.head.sparse_grad)


def _allreduce_sum_hook(state, bucket):  # no annotations: DDP checks them (and ours are strings)
    """DDP communication hook summing (not averaging) gradients: with Partial FC every rank's loss
    is already the loss of the whole global batch, so the sum is the gradient of that loss."""
    fut = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_distributed(model: nn.Module, head: nn.Module, runtime: Runtime) -> tuple[nn.Module, nn.Module]:
    """(backbone, head) to run the step with: the backbone in DistributedDataParallel, Partial FC
    as is (sharded, it synchronises itself), any other head in DDP too. One process: unchanged."""
    if not runtime.distributed:
        return model, head
    from torch.nn.parallel import DistributedDataParallel as DDP

    from facerec.heads.partial_fc import PartialFC

    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    net = DDP(model, device_ids=ids)
    if isinstance(head, PartialFC):
        net.register_comm_hook(None, _allreduce_sum_hook)
        return net, head
    return net, DDP(head, device_ids=ids)


def _sharded_params(head: nn.Module, runtime: Runtime) -> list[torch.Tensor]:
    from facerec.heads.partial_fc import PartialFC

    return list(head.parameters()) if runtime.distributed and isinstance(head, PartialFC) else []


def seed_everything(seed: int, rank: int = 0) -> None:
    import random

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def evaluate(model: nn.Module, data: TrainData, cfg: Config, runtime: Runtime) -> dict[str, dict[str, float]]:
    """10-fold verification of `model` on every validation set: {name: {accuracy, std, threshold}}."""
    from facerec.eval.embeddings import extract_embeddings
    from facerec.eval.verification import evaluate as verify

    out: dict[str, dict[str, float]] = {}
    was_training = model.training
    model.eval()
    for name, vset in data.val_sets.items():
        emb = extract_embeddings(
            model, vset.images, model.preprocess, flip=cfg.eval.flip, batch_size=cfg.eval.batch_size,
            device=str(runtime.device), progress=False,
        )
        res = verify(emb, vset.issame, nfolds=10, protocol=cfg.eval.protocol)
        out[name] = {"accuracy": float(res.accuracy_mean), "accuracy_std": float(res.accuracy_std),
                     "threshold": float(res.threshold_mean)}
    model.train(was_training)
    return out


def _step_is_finite(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
    """True when `loss` and every gradient of `params` are finite (one device sync)."""
    flags = [torch.isfinite(loss.detach()).all()]
    flags += [torch.isfinite(grad_values(p.grad)).all() for p in params if p.grad is not None]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def train_one_epoch(
    model: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data: TrainData,
    sampler: EpochSampler,
    state: TrainState,
    cfg: Config,
    runtime: Runtime,
    meter: Throughput,
    console: Console,
    metrics: JsonlLogger,
    total_steps: int,
    on_step: Any = None,
) -> float:
    """Run the remaining batches of epoch `state.epoch`; returns the mean loss of those batches."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model.train()
    head.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = _sharded_params(getattr(head, "module", head), runtime)
    pre = getattr(model, "module", model).preprocess
    accum = max(1, cfg.train.grad_accum)
    micro_losses: list[float] = []
    losses: list[float] = []
    window_loss, window_n = 0.0, 0
    usable = (sampler.batches_per_epoch // accum) * accum  # a partial accumulation never crosses epochs
    # on the CPU the loader hands over model-ready batches (converted per image while decoded);
    # to an accelerator it sends uint8, a quarter of the bytes, converted there
    on_host = runtime.device.type == "cpu"
    loader = data.loader(sampler, state.epoch, start_batch=state.batch_in_epoch, preprocess=pre if on_host else None)
    seen_bad = len(data.skipped)
    for x, y in loader:
        if state.step >= total_steps or state.batch_in_epoch >= usable:
            break
        for message in data.skipped[seen_bad:]:  # data.bad_records=skip: say what was left out
            console.print(f"[facerec] skipped a bad record: {message}")
            metrics.log({"event": "bad_record", "step": state.step, "epoch": state.epoch, "error": message})
        seen_bad = len(data.skipped)
        if x.shape[0] == 0:  # every record of this batch was bad
            state.batch_in_epoch += 1
            continue
        if not on_host:
            x = data.to_input(x.to(runtime.device, non_blocking=True), pre, train=True)
        y = y.to(runtime.device, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
        last_micro = (state.batch_in_epoch + 1) % accum == 0
        with contextlib.ExitStack() as stack:
            for m in (model, head):  # no gradient all-reduce until the last micro-batch
                if not last_micro and isinstance(m, DDP):
                    stack.enter_context(m.no_sync())
            with runtime.autocast():
                emb = model(x)
            loss = head(emb.float(), y)
            runtime.backward(loss / accum)
        micro_losses.append(float(loss.detach()))
        state.batch_in_epoch += 1
        if not last_micro:
            continue
        step_loss, micro_losses = float(np.mean(micro_losses)), []
        runtime.unscale(optimizer)
        if not runtime.all_true(math.isfinite(step_loss) and _step_is_finite(loss, params)):
            # skipped: no optimiser or schedule step; under fp16 the loss scale backs off. fp16
            # overflows (the first steps at GradScaler's initial scale) count like any bad step:
            # 20 in a row would mean the scale fell by 2**20
            optimizer.zero_grad(set_to_none=True)
            runtime.skip_step()
            state.bad_steps += 1
            state.consecutive_bad += 1
            fp16 = runtime.precision == "fp16"
            what = "loss" if not math.isfinite(step_loss) else "gradient (fp16 overflow)" if fp16 else "gradient"
            scale = f", grad scale now {runtime.grad_scale:g}" if fp16 else ""
            console.print(f"[facerec] step {state.step}: non-finite {what}, step skipped "
                          f"({state.consecutive_bad} in a row, {state.bad_steps} in total{scale})")
            metrics.log({"event": "bad_step", "step": state.step, "epoch": state.epoch, "non_finite": what.split()[0],
                         "consecutive": state.consecutive_bad, "grad_scale": runtime.grad_scale})
            if state.consecutive_bad >= max(1, cfg.train.max_bad_steps):
                raise TrainingDiverged(
                    f"{state.consecutive_bad} consecutive steps had a NaN/Inf loss or gradient at step {state.step} "
                    f"(train.max_bad_steps={cfg.train.max_bad_steps}{scale}); lower optim.lr, enable "
                    f"optim.grad_clip, or use train.precision={'bf16/fp32' if fp16 else 'fp32'}"
                )
            continue
        state.consecutive_bad = 0
        clip_gradients(params, cfg.optim.grad_clip, sharded=sharded)
        runtime.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1
        lv = step_loss  # mean over the accumulated micro-batches
        losses.append(lv)
        window_loss += lv
        window_n += 1
        meter.update(state.step, x.shape[0] * accum * runtime.world_size)
        console.advance(1, loss=f"{lv:.3f}")
        if state.step % cfg.train.log_every == 0 or state.step == total_steps:
            lr = optimizer.param_groups[0]["lr"]
            ips = meter.images_per_second
            rec = {"step": state.step, "epoch": state.epoch, "loss": window_loss / window_n, "lr": lr,
                   "images_per_second": ips, "grad_scale": runtime.grad_scale}
            metrics.log(rec)
            scale = f" scale {rec['grad_scale']:g}" if runtime.precision == "fp16" else ""
            console.print(
                f"epoch {state.epoch} step {state.step}/{total_steps} loss {rec['loss']:.4f} lr {lr:.4g}{scale} "
                f"{f'{ips:.0f}' if math.isfinite(ips) else '-'} img/s eta {format_duration(meter.eta(state.step))}"
            )
            window_loss, window_n = 0.0, 0
        if on_step is not None:
            on_step(state)
    return float(np.mean(losses)) if losses else float("nan")


def train(
    cfg: Config,
    run_dir: str | Path | None = None,
    *,
    tune: bool = False,
    resume: str | None = None,
    runtime: Runtime | None = None,
    data: TrainData | None = None,
    log: bool = True,
) -> TrainResult:
    """Train a model as `cfg` says; write config, metrics and checkpoints under `run_dir`.

    Args:
        run_dir: output directory (default `cfg.train.output_dir`).
        tune: the seed's "parameter adjustment mode": train and evaluate, write nothing.
        resume: "auto" (newest complete checkpoint in `run_dir`, if any) or a checkpoint path.
    """
    t_start = time.perf_counter()
    runtime = runtime or Runtime.from_config(cfg.train)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.train.seed, runtime.rank)
    run_path = Path(run_dir or cfg.train.output_dir)
    writes = runtime.is_main and not tune
    if writes:
        run_path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_path / "config.yaml")
    data = data or build_train_data(cfg, runtime)
    model = build_backbone(cfg).to(runtime.device)
    if cfg.train.sync_bn and runtime.distributed:  # before the optimiser: it shares the parameters anyway
        model = convert_sync_batchnorm(model, runtime.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.random.fork_rng(devices=[]):  # the same centres on every rank (each keeps its shard)
        torch.manual_seed(cfg.train.seed)
        head = build_classifier(cfg, data.num_classes, runtime.world_size).to(runtime.device)
    optimizer = build_optimizer(cfg.optim, model, head)
    net, head_net = wrap_distributed(model, head, runtime)
    if cfg.train.compile:  # the training forward only; evaluation and checkpoints use the plain module
        net = torch.compile(net)
    sampler = EpochSampler(len(data.train), cfg.train.batch_size, seed=cfg.train.seed,
                           rank=runtime.rank, world_size=runtime.world_size)
    steps_per_epoch = sampler.batches_per_epoch // max(1, cfg.train.grad_accum)
    if steps_per_epoch < 1:
        raise FacerecError(
            f"the training set has {len(data.train)} images, fewer than one step of "
            f"train.batch_size={cfg.train.batch_size} x train.grad_accum={cfg.train.grad_accum} x {runtime.world_size} ranks"
        )
    total_steps = int(math.ceil(cfg.train.epochs * steps_per_epoch))
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, total_steps)
    state = TrainState()
    if resume is not None:
        path = ckpt.latest_checkpoint(run_path) if resume == "auto" else Path(resume)
        if path is not None:
            _restore(ckpt.load_training_checkpoint(path), model, head, optimizer, scheduler, runtime, state, path)
    console = Console(enabled=runtime.is_main and log, total=total_steps)
    metrics = MultiLogger([
        JsonlLogger(run_path / "metrics.jsonl" if writes else None),
        TensorBoardLogger(run_path / "tensorboard") if writes and cfg.train.tensorboard else None,
        VisdomLogger(cfg.train.visdom_server, cfg.train.visdom_port, cfg.train.visdom_env, warn=console.print)
        if runtime.is_main and cfg.train.visdom else None,  # live plots also in tuning mode (nothing on disk)
    ])
    console.set_position(state.step)
    meter = Throughput(total_steps)
    eval_every = max(1, int(round(cfg.eval.every_epochs * steps_per_epoch))) if cfg.eval.every_epochs > 0 else 0
    val: dict[str, dict[str, float]] = {}
    last_ckpt: Path | None = None
    final_loss = float("nan")

    def save(step_state: TrainState) -> Path | None:
        if tune:
            return None
        full = _state_dict(cfg, model, head, optimizer, scheduler, runtime, step_state, sampler)  # collective
        if not writes:
            return None
        return ckpt.save_checkpoint(full, run_path, step_state.step, cfg.train.keep_last)

    def on_step(st: TrainState) -> None:
        nonlocal val, last_ckpt
        if cfg.train.checkpoint_every and st.step % cfg.train.checkpoint_every == 0:
            last_ckpt = save(st)
        if eval_every and st.step % eval_every == 0 and data.val_sets and st.step < total_steps:
            val = _evaluate_and_track(model, data, cfg, runtime, st, metrics, console, not tune, run_path,
                                      lambda: _state_dict(cfg, model, head, optimizer, scheduler, runtime, st, sampler))

    try:
        while state.step < total_steps:
            final_loss = train_one_epoch(net, head_net, optimizer, scheduler, data, sampler, state, cfg, runtime,
                                         meter, console, metrics, total_steps, on_step)
            if state.batch_in_epoch >= steps_per_epoch * max(1, cfg.train.grad_accum):
                state.epoch += 1
                state.batch_in_epoch = 0
        if data.val_sets:
            val = _evaluate_and_track(model, data, cfg, runtime, state, metrics, console, not tune, run_path,
                                      lambda: _state_dict(cfg, model, head, optimizer, scheduler, runtime, state, sampler))
        last_ckpt = save(state) or last_ckpt
    finally:
        console.close()
        metrics.close()
    return TrainResult(
        run_dir=run_path if writes else None, steps=state.step, epochs=state.step / steps_per_epoch,
        final_loss=final_loss, images_per_second=meter.images_per_second,
        wall_time=time.perf_counter() - t_start, bad_steps=state.bad_steps, val=val, best=dict(state.best),
        checkpoint=last_ckpt, model=model, head=head,
    )


def _evaluate_and_track(model, data, cfg, runtime, state, metrics, console, saving, run_path, make_state):
    """Rank 0 evaluates while the others wait; a new best is checkpointed (a collective step)."""
    val: dict[str, dict[str, float]] = {}
    improved = False
    if runtime.is_main:
        val = evaluate(model, data, cfg, runtime)
        for name, r in val.items():
            console.print(f"[val] step {state.step} {name}: accuracy {100 * r['accuracy']:.2f} "
                          f"+- {100 * r['accuracy_std']:.2f} (threshold {r['threshold']:.2f})")
            metrics.log({"event": "val", "step": state.step, "epoch": state.epoch, "set": name, **r})
            if r["accuracy"] > state.best.get(name, -1.0):
                state.best[name] = r["accuracy"]
                improved = True
    if saving and runtime.broadcast_object(improved):
        full = make_state()
        if runtime.is_main:
            ckpt.save_best(full, run_path)
    runtime.barrier()
    return val


def _state_dict(cfg, model, head, optimizer, scheduler, runtime, state: TrainState, sampler) -> dict[str, Any] | None:
    """Everything to resume from. With several processes every rank contributes its own head
    shard, optimiser state and RNG states ("per_rank", gathered to rank 0; None elsewhere)."""
    from facerec.models import model_checkpoint_dict

    local = {"head": head.state_dict(), "optimizer": optimizer.state_dict(), "rng": ckpt.rng_state()}
    parts = runtime.gather_objects(local) if runtime.distributed else [local]
    if parts is None:
        return None
    out = {
        "facerec_model": model_checkpoint_dict(model),
        "head": parts[0]["head"],
        "optimizer": parts[0]["optimizer"],
        "scheduler": scheduler.state_dict(),
        "scaler": runtime.scaler.state_dict(),
        "rng": parts[0]["rng"],
        "progress": {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "step": state.step,
                     "bad_steps": state.bad_steps, "world_size": runtime.world_size},
        "best": dict(state.best),
        "config": cfg.to_dict(),
    }
    if runtime.distributed:
        out["per_rank"] = parts
    return out


def _restore(saved, model, head, optimizer, scheduler, runtime, state: TrainState, path=None) -> None:
    from facerec.errors import CheckpointError

    saved_world = int(saved["progress"].get("world_size", 1))
    if saved_world != runtime.world_size:
        raise CheckpointError(f"{path}: written by {saved_world} process(es), resumed with {runtime.world_size}; "
                              f"the head shards, optimiser and RNG states are per rank, resume with the same count")
    mine = saved["per_rank"][runtime.rank] if "per_rank" in saved else saved
    model.load_state_dict(saved["facerec_model"]["state_dict"])
    head.load_state_dict(mine["head"])
    optimizer.load_state_dict(mine["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        runtime.scaler.load_state_dict(saved["scaler"])
    ckpt.set_rng_state(mine["rng"])
    p = saved["progress"]
    state.epoch, state.batch_in_epoch, state.step = p["epoch"], p["batch_in_epoch"], p["step"]
    state.bad_steps = p.get("bad_steps", 0)
    state.best = dict(saved.get("best", {}))
