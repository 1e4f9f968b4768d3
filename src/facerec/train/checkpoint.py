"""Training checkpoints: self-describing, plain-typed, written atomically, last K plus best kept.

A checkpoint is a dict loadable with `torch.load(weights_only=True)`:
`facerec_model` (arch, kwargs, preprocessing contract, backbone state), `head`, `optimizer`,
`scheduler`, `scaler`, `rng`, `progress` (epoch, step, position in the epoch), `best` and
the resolved `config`. Files are named `ckpt-<step>.pt`; a file becomes visible only once
completely written (temporary file + fsync + rename), so a crash mid-write never leaves a
checkpoint that `latest_checkpoint` would pick.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.errors import CheckpointError, not_a_file_reason
from facerec.io import atomic_save

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """RNG states of torch, numpy and python as plain types and tensors."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_python_state_from_plain(state["python"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_plain(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _python_state_from_plain(d: dict[str, Any]) -> tuple:
    return (d["version"], tuple(d["internal"]), d["gauss"])


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def save_checkpoint(state: dict[str, Any], run_dir: str | Path, step: int, keep_last: int = 2) -> Path:
    """Write `state` atomically as the checkpoint of `step`, then prune to the newest `keep_last`."""
    path = checkpoint_path(run_dir, step)
    atomic_save(path, lambda fh: torch.save(state, fh))
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def save_best(state: dict[str, Any], run_dir: str | Path) -> Path:
    path = Path(run_dir) / "checkpoints" / "best.pt"
    atomic_save(path, lambda fh: torch.save(state, fh))
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step checkpoints of a run, oldest first (temporary files never match)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (weights_only); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} {not_a_file_reason(p, 'checkpoint file')}")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(p)!r} cannot be read ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or "facerec_model" not in state or "progress" not in state:
        raise CheckpointError(f"{str(p)!r} is not a facerec training checkpoint (no 'progress' / 'facerec_model')")
    return state
