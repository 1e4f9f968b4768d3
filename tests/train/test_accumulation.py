"""Gradient accumulation: A micro-batches of B/A take the step one batch of B would.

The backbone here has no BatchNorm (its statistics would differ between a batch and its
micro-batches), so the two are equal up to fp32 rounding; the engine's own loop is run
(`train` -> `train_one_epoch`), only the backbone builder is swapped.
"""

import json

import pytest
import torch
from torch import nn

from facerec.config import load_config
from facerec.train import engine
from facerec.train.engine import build_classifier, train
from facerec.train.runtime import Runtime

BASE = [
    "model.input_size=[32, 32]", "model.embedding_size=32",
    "data.synthetic.identities=12", "data.synthetic.images_per_identity=8", "data.synthetic.val_identities=4",
    "data.synthetic.val_pairs=20", "data.synthetic.image_size=32", "train.log_every=1", "train.precision=fp32",
    "train.channels_last=false",
    "train.threads=1", "train.checkpoint_every=1", "train.keep_last=10",
    "head.type=fc", "head.margin=arcface", "head.s=16.0", "head.m=0.3",
    "optim.lr=0.2", "optim.momentum=0.9", "optim.weight_decay=0.0005", "optim.schedule=constant",
    "optim.warmup_epochs=0", "eval.every_epochs=0",
]
BATCH = 16  # the large batch B; 96 images = 6 steps per epoch whatever the accumulation


class TinyConvNet(nn.Module):
    """conv -> PReLU -> conv -> PReLU -> linear: no layer whose output depends on the batch."""

    def __init__(self, embedding_size: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.PReLU(8), nn.Conv2d(8, 8, 3, 2, 1), nn.PReLU(8))
        self.fc = nn.Linear(8 * 8 * 8, embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def _tiny_backbone(cfg):
    from facerec.models import create_model

    with torch.random.fork_rng(devices=[]):  # the same initial weights in every run
        torch.manual_seed(1234)
        net = TinyConvNet(cfg.model.embedding_size)
    ref = create_model("mobilefacenet", input_size=tuple(cfg.model.input_size),
                       embedding_size=cfg.model.embedding_size, width_mult=0.25)
    net.arch, net.arch_kwargs, net.preprocess, net.threshold = "tiny_conv_test", {}, ref.preprocess, None
    return net


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture
def run(monkeypatch, cache, tmp_path):
    """run(name, batch, accum, steps, *overrides, runtime=None) -> (per-step weights, losses)."""
    monkeypatch.setattr(engine, "build_backbone", _tiny_backbone)

    def go(name, batch, accum, steps, *extra, runtime=None):
        spe = 96 // batch // accum
        cfg = load_config(None, [*BASE, f"data.cache_dir={cache}", f"train.batch_size={batch}",
                                 f"train.grad_accum={accum}", f"train.epochs={(steps - 0.5) / spe}", *extra])
        out = tmp_path / name
        result = train(cfg, out, runtime=runtime, log=False)
        assert result.steps == steps
        weights = [_initial_weights(cfg)]
        for s in range(1, steps + 1):
            saved = torch.load(out / "checkpoints" / f"ckpt-{s:08d}.pt", weights_only=True)
            weights.append({**{f"backbone.{k}": v for k, v in saved["facerec_model"]["state_dict"].items()},
                            **{f"head.{k}": v for k, v in saved["head"].items()}})
        losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
        return weights, losses

    return go


def _initial_weights(cfg):
    net = _tiny_backbone(cfg)
    with torch.random.fork_rng(devices=[]):  # as `train` builds the head
        torch.manual_seed(cfg.train.seed)
        head = build_classifier(cfg, 12)
    return {**{f"backbone.{k}": v for k, v in net.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()}}


def _update_error(w0, w_ref, w):
    """max over tensors of max|w - w_ref| / max|update of w_ref|, less 4 ulps of each weight
    (the rounding of storing w0 + update in fp32, which no gradient can do better than)."""
    worst = 0.0
    for k in w_ref:
        update = (w_ref[k] - w0[k]).double()
        assert update.abs().max() > 0, f"{k} did not move"
        ulps = 4 * torch.finfo(torch.float32).eps * w_ref[k].double().abs()
        excess = ((w[k] - w_ref[k]).double().abs() - ulps).clamp(min=0)
        worst = max(worst, float(excess.max() / update.abs().max()))
    return worst


TOL = 2e-5  # fp32 rounding of the gradient sums, relative to the update: measured 1e-6 to 4e-6


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_micro_batches_take_the_large_batch_step(run, accum):
    big_w, big_loss = run("big", BATCH, 1, 2)
    acc_w, acc_loss = run("acc", BATCH // accum, accum, 2)
    w0 = big_w[0]
    # step 1 (plain SGD from the same weights) and step 2 (momentum; the gradients were reset)
    assert _update_error(w0, big_w[1], acc_w[1]) < TOL
    assert _update_error(w0, big_w[2], acc_w[2]) < TOL
    # the logged loss of an accumulated step is the loss of the whole batch
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)

    # what the comparison catches: the same micro-batches without accumulation (a step on B/A,
    # or one step per micro-batch) and accumulating the undivided micro-batch losses
    small_w, _ = run("small", BATCH // accum, 1, accum)
    assert _update_error(w0, big_w[1], small_w[1]) > 1000 * TOL
    assert _update_error(w0, big_w[1], small_w[accum]) > 1000 * TOL

    class UndividedRuntime(Runtime):
        def backward(self, loss):  # the engine passes loss / accum: undo the division
            super().backward(loss * accum)

    sum_w, _ = run("undivided", BATCH // accum, accum, 1, runtime=UndividedRuntime(torch.device("cpu")))
    assert _update_error(w0, big_w[1], sum_w[1]) > 1000 * TOL


def test_gradient_clipping_sees_the_accumulated_gradient(run):
    """optim.grad_clip acts on the gradient of the whole batch (the clip is active here)."""
    clip = "optim.grad_clip=0.5"
    free_w, _ = run("free", BATCH, 1, 1)
    big_w, _ = run("big", BATCH, 1, 1, clip)
    acc_w, _ = run("acc", BATCH // 2, 2, 1, clip)
    w0 = big_w[0]
    assert _update_error(w0, free_w[1], big_w[1]) > 1000 * TOL  # the clip changed the step
    assert _update_error(w0, big_w[1], acc_w[1]) < TOL
