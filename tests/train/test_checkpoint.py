import random

import numpy as np
import torch

from facerec.train import checkpoint as ck


def test_rng_state_round_trip():
    ck.set_rng_state(ck.rng_state())  # restoring the current state is harmless
    state = ck.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ck.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_rng_state_loads_with_weights_only(tmp_path):
    path = tmp_path / "s.pt"
    torch.save({"rng": ck.rng_state()}, path)
    loaded = torch.load(path, weights_only=True)
    ck.set_rng_state(loaded["rng"])


def test_keep_last_and_latest(tmp_path):
    for step in (10, 20, 30):
        ck.save_checkpoint({"step": step}, tmp_path, step, keep_last=2)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["ckpt-00000020.pt", "ckpt-00000030.pt"]
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-00000030.pt"


def test_partial_write_is_never_a_checkpoint(tmp_path):
    ck.save_checkpoint({"step": 1}, tmp_path, 1)

    def boom(fh):
        fh.write(b"partial")
        raise RuntimeError("killed mid-write")

    from facerec.io import atomic_save

    try:
        atomic_save(ck.checkpoint_path(tmp_path, 2), boom)
    except RuntimeError:
        pass
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-00000001.pt"]
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())
    # a leftover temporary file (as after SIGKILL) is ignored too
    (tmp_path / "checkpoints" / ".ckpt-00000003.pt.abc.tmp").write_bytes(b"x")
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-00000001.pt"


def test_load_errors_name_the_file(tmp_path):
    import pytest

    from facerec.errors import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load_training_checkpoint(tmp_path / "none.pt")
    from facerec.models.checkpoint import load_checkpoint

    for load in (ck.load_training_checkpoint, load_checkpoint):  # a folder given for a file: said so
        with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
            load(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        ck.load_training_checkpoint(bad)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from facerec.io import atomic_write_bytes

    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_bytes(tmp_path / "new.bin", b"x")
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(tmp_path / "new.bin", 0o640)
    atomic_write_bytes(tmp_path / "new.bin", b"y")  # replacing keeps the existing mode
    assert (tmp_path / "new.bin").stat().st_mode & 0o777 == 0o640
