"""Released weights as safetensors: tensors only (no pickle, nothing runs on load) plus the
model's description in the file's metadata, so `load_checkpoint` rebuilds the right architecture
with its preprocessing contract and decision threshold without being told anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from facerec.errors import CheckpointError
from facerec.io import atomic_write_bytes

FORMAT = "facerec-weights/1"


def save_safetensors(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write `model`'s weights and description (arch, kwargs, preprocess, threshold) atomically.

    The metadata holds `format`, `facerec_model` (JSON) and one flat key per preprocessing field
    (`input_size`, `color`, `mean`, `std`, `template`, `embedding_size`) for other readers.
    """
    from safetensors.torch import save

    from facerec.models.checkpoint import model_checkpoint_dict

    d = model_checkpoint_dict(model)
    tensors = {k: v.contiguous().clone() for k, v in d.pop("state_dict").items()}  # no shared storage
    pre = d["preprocess"]
    meta = {"format": FORMAT, "facerec_model": json.dumps(d), "arch": d["arch"],
            **{k: json.dumps(pre[k]) if not isinstance(pre[k], str) else pre[k]
               for k in ("input_size", "color", "mean", "std", "template", "embedding_size")}}
    if d.get("threshold"):
        meta["threshold"] = json.dumps(d["threshold"])
    meta.update(extra or {})
    atomic_write_bytes(path, save(tensors, metadata=meta))


def read_safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata dict of a safetensors file (reads the header only)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: not a safetensors file ({exc})") from None
    return dict(header.get("__metadata__") or {})


def load_safetensors(path: str | Path) -> nn.Module:
    """Rebuild the eval-mode model saved by `save_safetensors`."""
    from safetensors.torch import load_file

    from facerec.models.checkpoint import build_from_checkpoint_dict

    p = Path(path)
    meta = read_safetensors_metadata(p)
    if meta.get("format") != FORMAT or "facerec_model" not in meta:
        raise CheckpointError(f"{p}: safetensors without facerec metadata (format {meta.get('format')!r}); "
                              f"facerec cannot tell its architecture")
    try:
        d: dict[str, Any] = json.loads(meta["facerec_model"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: metadata 'facerec_model' is not valid JSON ({exc})") from None
    d["state_dict"] = load_file(str(p))
    return build_from_checkpoint_dict(d, str(p))
