"""ONNX export with the preprocessing in the metadata and a parity check on onnxruntime.

Accuracy lost in conversion is only noticed if something compares: every export runs the ONNX
model on onnxruntime against the PyTorch model on aligned faces and refuses to write a file whose
embeddings differ (max abs difference, min cosine similarity). The graph has one float32 NCHW
input `input` with a dynamic batch and one output `embedding` [B, D]. By default the input is
the normalised tensor of the model's contract; with `fold_preprocessing` it is the RGB image in
0..255 and the graph applies the colour order and (x - mean) / std itself.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facerec.contract import Preprocess, Threshold
from facerec.errors import CheckpointError, FacerecError
from facerec.io import atomic_write_bytes


class ExportError(FacerecError, RuntimeError):
    """An export that did not produce a faithful file."""


class _Folded(nn.Module):
    """RGB 0..255 float input -> the model's colour order and normalisation -> model."""

    def __init__(self, model: nn.Module, pre: Preprocess) -> None:
        super().__init__()
        self.model = model
        self.bgr = pre.color == "BGR"
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return self.model((x - self.mean) * self.inv_std)


@dataclass
class ParityReport:
    """onnxruntime against PyTorch on the same inputs."""

    path: str
    images: int
    image_source: str
    max_abs_diff: float
    max_abs_reference: float  # the largest embedding component, for scale
    min_cosine: float
    passed: bool
    atol: float
    min_cosine_required: float
    opset: int
    preprocessing_folded: bool
    onnxruntime: str
    export_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        state = "passed" if self.passed else "FAILED"
        return (f"parity {state} on {self.images} images ({self.image_source}): max |onnx - torch| = "
                f"{self.max_abs_diff:.2e} (embedding values up to {self.max_abs_reference:.2f}, allowed "
                f"{self.atol:.0e}), min cosine = {self.min_cosine:.7f} (required {self.min_cosine_required})")


def _metadata(model: nn.Module, folded: bool) -> dict[str, str]:
    from facerec.models.checkpoint import model_checkpoint_dict

    d = model_checkpoint_dict(model)
    d.pop("state_dict")
    pre = model.preprocess
    layout = ("float32 NCHW RGB in 0..255; colour order and normalisation are in the graph" if folded else
              f"float32 NCHW {pre.color}, (pixel - mean) / std with mean {list(pre.mean)}, std {list(pre.std)}")
    meta = {"facerec_model": json.dumps(d), "arch": model.arch, "preprocessing_folded": str(folded).lower(),
            "input_format": layout, "input_size": json.dumps(list(pre.input_size)), "color": pre.color,
            "mean": json.dumps(list(pre.mean)), "std": json.dumps(list(pre.std)), "template": pre.template,
            "embedding_size": str(pre.embedding_size)}
    if getattr(model, "threshold", None) is not None:
        meta["threshold"] = json.dumps(model.threshold.to_dict())
    return meta


def default_parity_images(pre: Preprocess, n: int = 8) -> tuple[np.ndarray, str]:
    """Built-in synthetic faces at the model's input size (when no real faces are given)."""
    from facerec.data.synthetic import render, sample_identity, _rng

    h, w = pre.input_size
    side = max(h, w)
    imgs = []
    for i in range(n):
        img = render(sample_identity(0, i), _rng(0, i, 1), size=side)
        top, left = (side - h) // 2, (side - w) // 2
        imgs.append(img[top : top + h, left : left + w])
    return np.stack(imgs), f"{n} built-in synthetic faces"


def _as_nchw_float(images: np.ndarray | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    from facerec.eval.embeddings import _to_nchw_uint8, fit_to_contract

    x = _to_nchw_uint8(images)
    return fit_to_contract(x, pre).float()


def _normalise(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    if pre.color == "BGR":
        x = x.flip(1)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x - mean) / std


def export_onnx(model: nn.Module, path: str | Path, opset: int = 18, fold_preprocessing: bool = False,
                parity_images: np.ndarray | torch.Tensor | None = None, image_source: str = "given images",
                atol: float = 1e-3, min_cosine: float = 0.99999, exporter: str = "dynamo") -> ParityReport:
    """Export `model` (built by facerec, with `preprocess`) to `path` and check parity.

    Args:
        parity_images: aligned RGB uint8 faces `[N, H, W, 3]` (resized to the contract if needed);
            default: built-in synthetic faces. At least 2 are used, in two batches of different
            size so the dynamic batch dimension is exercised.
        atol: allowed max abs difference of the embeddings, relative to the largest embedding
            value when that is above 1. min_cosine: required per-image cosine similarity.
        exporter: "dynamo" (torch.export based, the current exporter) or "torchscript" (legacy).
    Raises ExportError (and writes nothing) when parity fails.
    """
    import onnx
    import onnxruntime as ort

    pre: Preprocess = model.preprocess
    if parity_images is None:
        parity_images, image_source = default_parity_images(pre)
    raw = _as_nchw_float(parity_images, pre)
    if raw.shape[0] < 2:
        raise ExportError("the parity check needs at least 2 images")
    model = model.eval()
    net = _Folded(model, pre).eval() if fold_preprocessing else model
    feed = raw if fold_preprocessing else _normalise(raw, pre)
    example = feed[:2].contiguous()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "model.onnx"
        try:
            with torch.no_grad():
                if exporter == "dynamo":
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    torch.onnx.export(net, (example,), str(tmp_path), input_names=["input"], output_names=["embedding"],
                                      opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},),
                                      external_data=False, verbose=False)
                elif exporter == "torchscript":
                    torch.onnx.export(net, (example,), str(tmp_path), input_names=["input"], output_names=["embedding"],
                                      opset_version=opset, dynamo=False,
                                      dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
                else:
                    raise ValueError(f"exporter must be 'dynamo' or 'torchscript', got {exporter!r}")
        except ValueError:
            raise
        except Exception as exc:  # the exporters raise many types; name the model and the cause
            raise ExportError(f"torch.onnx.export of {getattr(model, 'arch', type(model).__name__)} failed: "
                              f"{exc.__class__.__name__}: {str(exc)[:500]}") from exc
        proto = onnx.load(str(tmp_path))
    seconds = time.perf_counter() - t0
    for k, v in _metadata(model, fold_preprocessing).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    data = proto.SerializeToString()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = net(feed).float().numpy()
    cut = max(1, feed.shape[0] // 2)  # two runs of different batch size
    got = np.concatenate([session.run(None, {"input": feed[:cut].numpy()})[0],
                          session.run(None, {"input": feed[cut:].numpy()})[0]]) if cut < feed.shape[0] else \
        session.run(None, {"input": feed.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    allowed = atol * max(1.0, scale)
    report = ParityReport(str(path), int(feed.shape[0]), image_source, diff, scale, float(cos.min()),
                          bool(diff <= allowed and cos.min() >= min_cosine and np.isfinite(got).all()),
                          allowed, min_cosine, opset, fold_preprocessing, ort.__version__, round(seconds, 2))
    if not report.passed:
        raise ExportError(f"ONNX export of {model.arch} not written to {path}: {report.summary()}")
    atomic_write_bytes(path, data)
    return report


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict."""
    import onnx

    p = Path(path)
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise CheckpointError(f"{p}: cannot be read as ONNX ({exc.__class__.__name__}: {exc})") from None
    return {e.key: e.value for e in proto.metadata_props}


class OnnxEmbedder(nn.Module):
    """An exported model on onnxruntime behind the PyTorch model interface: `forward` takes the
    normalised input of the contract (`preprocess`, read from the file), so evaluation and
    `facerec.Embedder` use it like the original; a folded graph gets the pixels back exactly."""

    def __init__(self, path: str | Path, threads: int | None = None, preprocess: Preprocess | None = None) -> None:
        """`preprocess` states the input of an ONNX file from another framework (no facerec
        metadata): its graph then takes the normalised tensor of that contract."""
        super().__init__()
        import onnxruntime as ort

        meta = read_onnx_metadata(path)
        self.path = str(path)
        if "facerec_model" in meta and preprocess is None:
            d = json.loads(meta["facerec_model"])
            self.arch = f"onnx:{d['arch']}"
            self.arch_kwargs = d.get("kwargs", {})
            self.preprocess = Preprocess.from_dict(d["preprocess"])
            self.threshold = Threshold.from_dict(d["threshold"]) if d.get("threshold") else None
            self.folded = meta.get("preprocessing_folded") == "true"
        elif preprocess is not None:
            self.arch, self.arch_kwargs, self.preprocess, self.threshold = f"onnx:{Path(path).stem}", {}, preprocess, None
            self.folded = False
        else:
            raise CheckpointError(f"{path}: ONNX without facerec metadata, so its preprocessing is unknown; state it "
                                  f"(facerec eval --onnx FILE --input-size H W --mean M M M --std S S S [--bgr])")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"{path}: expected one input, the graph has {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape  # e.g. ["batch", 3, 112, 112]; symbolic dims are strings
        want = (3, *self.preprocess.input_size)
        if len(shape) != 4 or any(isinstance(s, int) and s != w for s, w in zip(shape[1:], want)):
            raise CheckpointError(f"{path}: the graph takes input {shape}, the stated preprocessing gives "
                                  f"[N, {want[0]}, {want[1]}, {want[2]}]")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.folded:  # undo the contract's normalisation: the graph redoes it
            pre = self.preprocess
            x = x * torch.tensor(pre.std).view(1, 3, 1, 1) + torch.tensor(pre.mean).view(1, 3, 1, 1)
            if pre.color == "BGR":
                x = x.flip(1)
        return torch.from_numpy(self.session.run(None, {self.input_name: x.contiguous().numpy()})[0])
