"""Margins (pure functions of cosine logits) and the heads that own the class centres."""

from facerec.heads.adaptive import AdaFace, CurricularFace, MagFace
from facerec.heads.fc import FullFC, NormLinear, SoftmaxHead, build_head, pool_subcenters
from facerec.heads.margins import ArcFace, CombinedMargin, CosFace, SphereFace, create_margin, list_margins
from facerec.heads.subcenter import dominant_subcenters, keep_dominant, subcenter_outliers

__all__ = ["AdaFace", "ArcFace", "CombinedMargin", "CosFace", "CurricularFace", "FullFC", "MagFace", "NormLinear",
           "SoftmaxHead", "SphereFace", "build_head", "create_margin", "dominant_subcenters", "keep_dominant", "list_margins",
           "pool_subcenters", "subcenter_outliers"]
