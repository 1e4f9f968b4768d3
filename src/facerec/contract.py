"""The preprocessing contract that travels with a model's weights.

Mismatched colour order, normalisation and alignment are the most common reason users
cannot reproduce a published accuracy, so every model built or loaded by facerec carries
one of these (`model.preprocess`), checkpoints and exported files store it, and
evaluation and export read it instead of guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TEMPLATES = ("arcface", "sphereface")


@dataclass(frozen=True)
class Preprocess:
    """How an image must be prepared for a model.

    Attributes:
        input_size: (height, width) of the aligned crop fed to the model.
        color: channel order of the input tensor, "RGB" or "BGR".
        mean, std: per-channel normalisation on 0..255 pixel values: (x - mean) / std.
        template: 5-point alignment template name: "arcface" (112x112) or "sphereface"
            (112x96, the ArcFace template minus 8 px in x), scaled to `input_size`.
        embedding_size: dimension of the output embedding.
    """

    input_size: tuple[int, int] = (112, 112)
    color: str = "RGB"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    template: str = "arcface"
    embedding_size: int = 512
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.color not in ("RGB", "BGR"):
            raise ValueError(f"Preprocess.color must be 'RGB' or 'BGR', got {self.color!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"Preprocess.template must be one of {TEMPLATES}, got {self.template!r}")
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def crop_columns(self, height: int, width: int) -> tuple[int, int] | None:
        """The columns (lo, hi) of a stored `height` x `width` face crop that are this model's
        input: all of them when the sizes match; the central ones when a 112x96 SphereFace-template
        model gets square ArcFace-aligned crops (the templates differ by exactly 8 px in x at
        112); None when the crop needs a resize."""
        h, w = self.input_size
        if (height, width) == (h, w):
            return 0, width
        if self.template == "sphereface" and height == h and width == height and w * 112 == width * 96:
            lo = (width - w) // 2
            return lo, lo + w
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, floats, str), safe for JSON, YAML, safetensors metadata."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        known = {k: d[k] for k in ("input_size", "color", "mean", "std", "template", "embedding_size") if k in d}
        return cls(**known, extra=dict(d.get("extra", {})))


@dataclass(frozen=True)
class Threshold:
    """A same/different decision rule for cosine similarity, fitted by evaluation.

    Stored with the model (checkpoints, safetensors and ONNX metadata) so that `compare` states
    where its decision comes from.

    Attributes:
        cosine: pairs with cosine similarity >= this are "same".
        criterion: "best_accuracy" (the threshold maximising accuracy over all pairs) or
            "far=1e-3" style (the lowest threshold whose false accept rate is at most that).
        benchmark: the pairs it was fitted on (e.g. "lfw", 6000 pairs).
        flip: the flip fusion of the embeddings it was fitted with ("none", "sum", "concat").
        accuracy, far, tar: what it achieves on those pairs.
    """

    cosine: float
    criterion: str
    benchmark: str
    flip: str = "none"
    num_pairs: int = 0
    accuracy: float | None = None
    far: float | None = None
    tar: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Threshold":
        fields = ("cosine", "criterion", "benchmark", "flip", "num_pairs", "accuracy", "far", "tar")
        return cls(**{k: d[k] for k in fields if k in d})

    def describe(self) -> str:
        what = f"best accuracy {self.accuracy:.4f}" if self.criterion == "best_accuracy" and self.accuracy is not None \
            else f"{self.criterion}"
        if self.far is not None and self.criterion != "best_accuracy":
            what += f" (TAR {self.tar:.4f} at FAR {self.far:.2g})" if self.tar is not None else ""
        return f"cosine >= {self.cosine:.4f}: {what} on {self.benchmark} ({self.num_pairs} pairs, flip {self.flip})"
