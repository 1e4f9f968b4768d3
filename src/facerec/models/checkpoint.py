"""Saving and loading backbones with their architecture and preprocessing contract.

A facerec model checkpoint is a dict of plain types and tensors (loadable with
`torch.load(weights_only=True)`) with key "facerec_model": {"arch", "kwargs", "preprocess",
"state_dict"[, "threshold"]}; training checkpoints hold that key among others. Released weights
are safetensors files with the same description in their metadata (`facerec.export.weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from facerec.contract import Preprocess, Threshold
from facerec.errors import CheckpointError, not_a_file_reason
from facerec.io import atomic_save


def model_checkpoint_dict(model: nn.Module) -> dict[str, Any]:
    """{"arch", "kwargs", "preprocess", "state_dict"} of a model built by `create_model`."""
    for attr in ("arch", "arch_kwargs", "preprocess"):
        if not hasattr(model, attr):
            raise CheckpointError(f"model has no '{attr}': build it with facerec.models.create_model")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v.detach().cpu() for k, v in model.state_dict().items()}
    d = {"arch": model.arch, "kwargs": dict(model.arch_kwargs), "preprocess": model.preprocess.to_dict(),
         "state_dict": state}
    if getattr(model, "threshold", None) is not None:
        d["threshold"] = model.threshold.to_dict()
    return d


def save_model(model: nn.Module, path: str | Path) -> None:
    """Write a self-describing model checkpoint atomically."""
    d = {"facerec_model": model_checkpoint_dict(model)}
    atomic_save(path, lambda fh: torch.save(d, fh))


def _strip(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_strict(model: nn.Module, state: dict[str, Any], where: str) -> None:
    """load_state_dict(strict=True) with an error listing the first mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:5])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:5])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
        raise CheckpointError(f"{where}: weights do not fit architecture '{getattr(model, 'arch', '?')}': " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def build_from_checkpoint_dict(d: dict[str, Any], where: str = "checkpoint") -> nn.Module:
    """Rebuild a model from a "facerec_model" dict."""
    from facerec.models.registry import create_model

    try:
        model = create_model(d["arch"], preprocess=Preprocess.from_dict(d["preprocess"]), **d["kwargs"])
    except KeyError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    load_state_strict(model, _strip(d["state_dict"]), where)
    if d.get("threshold"):
        model.threshold = Threshold.from_dict(d["threshold"])
    return model.eval()


def load_checkpoint(path: str | Path, arch: str | None = None, map_location: str = "cpu") -> nn.Module:
    """Load a model as an eval-mode module with its preprocessing contract: a facerec checkpoint
    (model or training), facerec safetensors weights, an arcface_torch `backbone.pth` (IResNet and
    `mbf` inferred from the keys, else pass `arch`) or the seed lineage's `{'net_state_dict'}`."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} {not_a_file_reason(p, 'checkpoint file')}")
    if p.suffix == ".safetensors":
        from facerec.export.weights import load_safetensors

        return load_safetensors(p)
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot be read as a torch checkpoint ({exc.__class__.__name__}: {exc})") from None
    if isinstance(obj, dict) and "facerec_model" in obj:
        return build_from_checkpoint_dict(obj["facerec_model"], str(p))
    if isinstance(obj, dict) and "net_state_dict" in obj:
        return _load_seed_mobilefacenet(obj["net_state_dict"], str(p))
    if isinstance(obj, dict) and obj and all(hasattr(v, "shape") for v in obj.values()):
        from facerec.models.registry import create_model

        state = _strip(obj)
        kwargs = (_infer_iresnet(state) or _infer_mbf(state)) if arch is None else {}
        if arch is None and kwargs is None:
            raise CheckpointError(f"{p}: a plain state_dict of an architecture facerec cannot infer; "
                                  f"pass arch=... (e.g. 'r50', 'mbf')")
        if arch is None:
            arch = kwargs.pop("arch")
        model = create_model(arch, **kwargs)
        load_state_strict(model, state, str(p))
        return model.eval()
    raise CheckpointError(f"{p}: not a checkpoint facerec knows (no 'facerec_model' or 'net_state_dict' entry)")


# The seed lineage's MobileFaceNet (Xiaoccer/MobileFaceNet_Pytorch, CASIA-WebFace): 128-d
# embeddings of 112x96 RGB crops aligned to the SphereFace template, normalised (x - 127.5) / 128.
SEED_MOBILEFACENET_CONTRACT = Preprocess(
    input_size=(112, 96), color="RGB", mean=(127.5,) * 3, std=(128.0,) * 3, template="sphereface",
    embedding_size=128,
)


def _load_seed_mobilefacenet(state: dict[str, Any], where: str) -> nn.Module:
    """A `{'net_state_dict': ...}` checkpoint of the seed lineage: keys map one to one onto ours."""
    from facerec.models.registry import create_model

    state = _strip(state)
    w = state.get("linear7.conv.weight")
    emb = state.get("linear1.conv.weight")
    if w is None or emb is None:
        raise CheckpointError(f"{where}: 'net_state_dict' is not a MobileFaceNet of the seed lineage "
                              f"(no linear7/linear1 keys)")
    kh, kw = int(w.shape[-2]), int(w.shape[-1])
    size = (kh * 16, kw * 16)
    contract = Preprocess(**{**SEED_MOBILEFACENET_CONTRACT.to_dict(), "input_size": size,
                             "embedding_size": int(emb.shape[0]),
                             "template": "sphereface" if size[1] * 112 == size[0] * 96 else "arcface"})
    model = create_model("mobilefacenet", preprocess=contract, embedding_size=int(emb.shape[0]), input_size=size)
    load_state_strict(model, state, where)
    return model.eval()


def _infer_iresnet(state: dict[str, Any]) -> dict[str, Any] | None:
    """Architecture of an arcface_torch IResNet `backbone.pth` from its keys and shapes."""
    from facerec.models.iresnet import LAYERS

    if "fc.weight" not in state or "layer4.0.conv1.weight" not in state:
        return None
    counts = []
    for i in range(1, 5):
        ids = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}
        counts.append(max(ids) + 1 if ids else 0)
    depth = next((d for d, layers in LAYERS.items() if tuple(counts) == layers), None)
    if depth is None:
        return None
    emb, fc_in = (int(v) for v in state["fc.weight"].shape)
    side = int(round((fc_in / 512) ** 0.5))
    if side * side * 512 != fc_in:
        return None
    return {"arch": f"iresnet{depth}", "embedding_size": emb, "input_size": (side * 16, side * 16)}


def _infer_mbf(state: dict[str, Any]) -> dict[str, Any] | None:
    """arcface_torch `mbf` / `mbf_large` from the stem width (128 or 256 channels)."""
    stem, gdc, fc = (state.get(k) for k in ("layers.0.layers.0.weight", "features.layers.0.layers.0.weight",
                                             "features.layers.2.weight"))
    if stem is None or gdc is None or fc is None:
        return None
    arch = {128: "mbf", 256: "mbf_large"}.get(int(stem.shape[0]))
    if arch is None:
        return None
    return {"arch": arch, "embedding_size": int(fc.shape[0]),
            "input_size": (int(gdc.shape[-2]) * 16, int(gdc.shape[-1]) * 16)}
