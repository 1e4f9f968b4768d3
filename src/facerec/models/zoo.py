"""Registrations of the built-in backbones."""

from __future__ import annotations

from facerec.models.mobilefacenet import MobileFaceNet
from facerec.models.registry import register_model


@register_model("mobilefacenet", aliases=("mobilefacenet_paper",))
def mobilefacenet(embedding_size: int = 128, input_size=(112, 112), width_mult: float = 1.0) -> MobileFaceNet:
    """The paper's MobileFaceNet (the seed's lineage); 128-d by default."""
    return MobileFaceNet(embedding_size=embedding_size, input_size=tuple(input_size), width_mult=width_mult)
