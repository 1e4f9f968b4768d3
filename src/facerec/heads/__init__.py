"""Margins (pure functions of cosine logits) and the heads that own the class centres."""

from facerec.heads.fc import FullFC, NormLinear, build_head
from facerec.heads.margins import ArcFace, CombinedMargin, CosFace, SphereFace, create_margin, list_margins

__all__ = ["ArcFace", "CombinedMargin", "CosFace", "SphereFace", "FullFC", "NormLinear", "build_head", "create_margin", "list_margins"]
