import json

import pytest
import torch

from facerec.config import load_config
from facerec.errors import DataError
from facerec.train.engine import train

TINY = [
    "model.input_size=[32, 32]",
    "model.embedding_size=64",
    "model.options={width_mult: 0.25}",
    "data.synthetic.identities=12",
    "data.synthetic.images_per_identity=8",
    "data.synthetic.val_identities=10",
    "data.synthetic.val_pairs=40",
    "train.batch_size=16",
    "train.log_every=1",
    "train.precision=fp32",
    "head.s=16.0",
    "head.m=0.2",
    "optim.lr=0.05",
    "optim.schedule=constant",
    "optim.warmup_epochs=0",
    "eval.every_epochs=0",
]


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*extra):
        return load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'cache'}", *extra])

    return make


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_short_training_run_loss_decreases(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_cfg("train.epochs=12")
    run = tmp_path / "run"
    result = train(cfg, run, log=False)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == result.steps == 12 * (96 // 16)
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)
    assert (run / "config.yaml").is_file() and result.checkpoint.is_file()
    assert "synthetic_val" in result.val


def test_tune_mode_writes_nothing(tiny_cfg, tmp_path):
    run = tmp_path / "tune"
    train(tiny_cfg("train.epochs=1", "train.checkpoint_every=1"), run, tune=True, log=False)
    assert not run.exists() or not any(run.iterdir())


def test_missing_training_set_is_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(DataError, match="data.train"):
        train(tiny_cfg(f"data.train={tmp_path / 'none.rec'}"), tmp_path / "r", log=False)
    with pytest.raises(DataError, match=r"data.val.*is a directory, not a .bin verification file"):
        train(tiny_cfg(f"data.val=[{tmp_path}]"), tmp_path / "r", log=False)


def test_bf16_autocast_step_runs_and_is_finite(tiny_cfg, tmp_path):
    """The bf16 path (the fast path on CPUs with AVX512-BF16/AMX) trains with finite losses."""
    result = train(tiny_cfg("train.epochs=0.3", "train.precision=bf16"), tmp_path / "bf16", log=False)
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16") if "loss" in r]
    assert result.steps == 2 and len(losses) == 2
    assert all(l == l and l < 1e4 for l in losses)  # finite


def test_resolve_precision():
    import torch

    from facerec.errors import ConfigError
    from facerec.train.runtime import cpu_supports_bf16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp16", cpu) == "fp16"  # fp16 autocast and GradScaler("cpu") exist
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_identical(tiny_cfg, tmp_path):
    """A run resumed from a mid-epoch checkpoint ends with exactly the uninterrupted run's weights."""
    cfg = tiny_cfg("train.epochs=2", "train.checkpoint_every=4", "train.keep_last=10", "optim.schedule=cosine")
    full = train(cfg, tmp_path / "full", log=False)
    ckpts = sorted((tmp_path / "full" / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in ckpts] == ["ckpt-00000004.pt", "ckpt-00000008.pt", "ckpt-00000012.pt"]
    resumed = train(cfg, tmp_path / "resumed", resume=str(ckpts[0]), log=False)  # step 4 of 6 in epoch 0
    assert resumed.steps == full.steps == 12
    for a, b in ((full.model, resumed.model), (full.head, resumed.head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_auto_without_checkpoints_starts_fresh(tiny_cfg, tmp_path):
    result = train(tiny_cfg("train.epochs=0.3"), tmp_path / "fresh", resume="auto", log=False)
    assert result.steps == 2


@pytest.mark.parametrize("head", [
    ["head.type=partial_fc", "head.sample_rate=0.5", "head.sparse_grad=true", "head.sub_centers=2",
     "head.margin=adaface", "head.m=0.4"],
    ["head.type=fc", "head.margin=magface", "head.options={l_a: 1.0, u_a: 20.0}"],
    ["head.type=fc", "head.margin=curricularface"],
    ["head.type=softmax"],
])
def test_every_head_kind_trains_from_the_config(tiny_cfg, tmp_path, head):
    torch.manual_seed(0)
    run = tmp_path / "run"
    result = train(tiny_cfg("train.epochs=1", *head), run, log=False)
    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert len(losses) == result.steps > 0 and all(torch.isfinite(torch.tensor(losses)))
    state = torch.load(result.checkpoint, weights_only=True)
    assert any(k.startswith("weight") or ".weight" in k for k in state["head"])


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_auto_is_bit_identical(tmp_path):
    """A run killed with SIGKILL (possibly while writing a checkpoint) and resumed with
    `--resume auto` ends with exactly the weights of an uninterrupted run."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    overrides = [*TINY, f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2", "train.checkpoint_every=1",
                 "train.keep_last=3", "train.deterministic=true", "train.threads=1", "optim.schedule=cosine"]
    config = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    cfg = load_config(config, overrides)
    full = train(cfg, tmp_path / "full", log=False)
    run = tmp_path / "killed"
    kill_after = random.Random().randint(2, full.steps - 2)
    cmd = [sys.executable, "-m", "facerec", "train", str(config), "--run-dir", str(run)]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = sum('"loss"' in line for line in metrics.read_text().splitlines()) if metrics.exists() else 0
        if done >= kill_after:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = train(cfg, run, resume="auto", log=False)
    assert resumed.steps == full.steps
    for a, b in ((full.model, resumed.model), (full.head, resumed.head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f"killed after step {kill_after}"


def test_accumulation_leftover_micro_batches_do_not_leak_into_the_next_epoch(tiny_cfg, tmp_path):
    # 96 images / batch 16 = 6 micro-batches per epoch, accumulation 4: one step per epoch, the 2
    # leftover micro-batches are dropped (not carried into the next epoch's first step)
    run = tmp_path / "run"
    result = train(tiny_cfg("train.epochs=3", "train.grad_accum=4"), run, log=False)
    steps = [r for r in read_metrics(run) if "loss" in r]
    assert result.steps == 3 and [r["epoch"] for r in steps] == [0, 1, 2]


def test_pretrained_backbone_is_loaded_and_checked(tmp_path):
    from facerec.errors import ConfigError
    from facerec.models import create_model, save_model
    from facerec.train.engine import build_backbone

    torch.manual_seed(0)
    src = create_model("mobilefacenet", input_size=(32, 32), embedding_size=64, width_mult=0.25)
    save_model(src, tmp_path / "w.pt")
    ok = load_config(None, ["model.input_size=[32, 32]", "model.embedding_size=64",
                            "model.options={width_mult: 0.25}", f"model.pretrained={tmp_path / 'w.pt'}"])
    model = build_backbone(ok)
    assert model.training and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                                      src.state_dict().values()))
    bad = load_config(None, ["model.input_size=[32, 32]", "model.embedding_size=128",
                             f"model.pretrained={tmp_path / 'w.pt'}"])
    with pytest.raises(ConfigError, match="model.pretrained"):
        build_backbone(bad)


def test_112x96_models_default_to_the_sphereface_template():
    from facerec.models import create_model

    assert create_model("mobilefacenet", input_size=(112, 96), embedding_size=128).preprocess.template == "sphereface"
    assert create_model("mobilefacenet", input_size=(112, 112)).preprocess.template == "arcface"


@pytest.mark.slow
def test_train_compile_switch_trains_and_matches_eager_closely(tiny_cfg, tmp_path):
    torch.manual_seed(0)
    eager = train(tiny_cfg("train.epochs=0.5"), tmp_path / "eager", log=False)
    torch.manual_seed(0)
    compiled = train(tiny_cfg("train.epochs=0.5", "train.compile=true"), tmp_path / "compiled", log=False)
    le = [r["loss"] for r in read_metrics(tmp_path / "eager") if "loss" in r]
    lc = [r["loss"] for r in read_metrics(tmp_path / "compiled") if "loss" in r]
    # compiled kernels round differently; this tiny run amplifies that within a few steps, so
    # the first two losses are compared (a wrong graph would differ at once) and the rest checked finite
    assert len(lc) == len(le) == 3 and lc[:2] == pytest.approx(le[:2], rel=1e-3)
    assert all(torch.isfinite(torch.tensor(lc)))
    assert not hasattr(compiled.model, "_orig_mod")  # the saved/evaluated backbone is the plain module


def test_training_with_loader_workers_is_bit_identical_to_without(tiny_cfg, tmp_path):
    """Workers change where batches are decoded and normalised (and that they arrive in reused
    shared buffers, without a copy), never what the model trains on."""
    results = {}
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        results[workers] = train(tiny_cfg("train.epochs=2", "train.threads=1", f"data.num_workers={workers}"),
                                 run, log=False)
        results[workers].losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    assert results[0].steps == results[2].steps == 12
    assert results[0].losses == results[2].losses
    for (name, p), q in zip(results[0].model.state_dict().items(), results[2].model.state_dict().values()):
        assert torch.equal(p, q), name
