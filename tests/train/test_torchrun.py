"""`torchrun --nproc_per_node=2 -m facerec train ...`: the real command line on 2 gloo processes."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# A MobileFaceNet at quarter width on 32x32 synthetic faces: 12 identities x 8 images, batch 8 per
# rank, so one epoch is 6 global steps. A constant learning rate (after a 1.5-step warm-up) makes
# the schedule independent of the run's length: 3 steps resumed to 6 take the steps of a 6-step run.
TINY = """\
model: {name: mobilefacenet, embedding_size: 32, input_size: [32, 32], options: {width_mult: 0.25}}
head: {type: fc, s: 16.0, m: 0.2}
data:
  train: synthetic
  synthetic: {identities: 12, images_per_identity: 8, val_identities: 10, val_pairs: 40, image_size: 32}
optim: {lr: 0.01, momentum: 0.9, schedule: constant, warmup_epochs: 0.25, grad_clip: 2.0}
train: {batch_size: 8, log_every: 1, precision: fp32, threads: 1}
eval: {every_epochs: 0}
"""

STEP_LINE = re.compile(r"^epoch \d+ step (\d+)/(\d+) loss (\S+) ", re.MULTILINE)


def _torchrun(config: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc_per_node=2 -m facerec train CONFIG ARGS`.

    --standalone lets the launcher take a free port itself (no race with other tests for one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "facerec", "train", str(config), *args]
    # Output to files, not pipes: torchrun starts every worker in a session of its own, so a worker
    # outliving a killed launcher would hold a pipe open. On a timeout SIGTERM goes to the launcher,
    # which stops its workers (after a SIGKILL to the launcher alone, they were left waiting for
    # its store, still there 10 minutes later).
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        late = ""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            late = f" (stopped after {timeout:g} s)"
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    assert result.returncode == 0, f"exit {result.returncode}{late}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def _steps_printed(proc) -> list[tuple[int, int, str]]:
    return [(int(s), int(n), loss) for s, n, loss in STEP_LINE.findall(proc.stdout + proc.stderr)]


def _files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(path: Path, step: int) -> None:
    saved = torch.load(path, weights_only=True)
    assert saved["progress"]["step"] == step and saved["progress"]["world_size"] == 2
    shards = [r["head"]["weight"] for r in saved["per_rank"]]
    assert len(shards) == 2 and [s.shape[0] for s in shards] == [6, 6]  # 12 identities, half on each rank
    assert not torch.equal(shards[0], shards[1])


@pytest.mark.slow  # three 2-process launches: 37 s on 2 idle cores, ~70 s with the cores busy
def test_torchrun_cli_trains_resumes_and_tunes_with_rank0_alone_writing(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    run = tmp_path / "run"

    # 3 steps (half an epoch): only rank 0 prints, and it alone writes the run directory
    first = _torchrun(config, "--set", cache, "--set", "train.epochs=0.5", "--run-dir", str(run))
    assert [(s, n) for s, n, _ in _steps_printed(first)] == [(1, 3), (2, 3), (3, 3)]
    assert first.stdout.count("generating 96 training images") == 1
    assert first.stdout.count(f"run directory: {run}") == 1
    assert _files(run) == {"config.yaml", "metrics.jsonl", "checkpoints/ckpt-00000003.pt", "checkpoints/best.pt"}
    assert [r["step"] for r in _records(run) if "event" not in r] == [1, 2, 3]
    _checkpoint(run / "checkpoints" / "ckpt-00000003.pt", 3)

    # --resume auto with one epoch: from the middle of epoch 0 at step 3 on to step 6, appending
    second = _torchrun(config, "--set", cache, "--set", "train.epochs=1", "--run-dir", str(run), "--resume", "auto")
    assert [(s, n) for s, n, _ in _steps_printed(second)] == [(4, 6), (5, 6), (6, 6)]
    assert second.stdout.count(f"run directory: {run}") == 1
    assert _files(run) == {"config.yaml", "metrics.jsonl", "checkpoints/ckpt-00000003.pt",
                           "checkpoints/ckpt-00000006.pt", "checkpoints/best.pt"}
    records = _records(run)
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert [(r["event"], r["step"]) for r in records if "event" in r] == [("val", 3), ("val", 6)]
    _checkpoint(run / "checkpoints" / "ckpt-00000006.pt", 6)

    # --tune, 6 steps uninterrupted: writes nothing, and its losses are those of the 3 + 3 steps
    tune_run = tmp_path / "tune"
    tune = _torchrun(config, "--set", cache, "--set", "train.epochs=1", "--run-dir", str(tune_run), "--tune")
    printed = _steps_printed(tune)
    assert [(s, n) for s, n, _ in printed] == [(s, 6) for s in range(1, 7)]
    assert not tune_run.exists() and "run directory" not in tune.stdout
    assert [loss for _, _, loss in printed] == [f"{r['loss']:.4f}" for r in records if "event" not in r]
