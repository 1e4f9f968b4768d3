"""Registrations of the built-in backbones."""

from __future__ import annotations

from facerec.models.mobilefacenet import MobileFaceNet
from facerec.models.registry import register_model


@register_model("mobilefacenet", aliases=("mobilefacenet_paper",))
def mobilefacenet(embedding_size: int = 128, input_size=(112, 112), width_mult: float = 1.0) -> MobileFaceNet:
    """The paper's MobileFaceNet (the seed's lineage); 128-d by default."""
    return MobileFaceNet(embedding_size=embedding_size, input_size=tuple(input_size), width_mult=width_mult)


def _iresnet(depth: int, se: bool = False):
    from facerec.models.iresnet import LAYERS, IBasicBlock, IResNet, SEIBasicBlock

    def build(embedding_size: int = 512, input_size=(112, 112), dropout: float = 0.0,
              grad_checkpointing: bool = False) -> IResNet:
        return IResNet(LAYERS[depth], embedding_size, tuple(input_size), dropout, grad_checkpointing,
                       block=SEIBasicBlock if se else IBasicBlock)

    build.__doc__ = (f"SE-IResNet-{depth} (squeeze-excitation in every IR unit)" if se
                     else f"IResNet-{depth} (arcface_torch `r{depth}`)") + ", 512-d by default."
    return build


for _depth in (18, 34, 50, 100, 200):
    register_model(f"iresnet{_depth}", aliases=(f"r{_depth}",))(_iresnet(_depth))
for _depth in (50, 100):
    register_model(f"ir_se{_depth}", aliases=(f"se_r{_depth}",))(_iresnet(_depth, se=True))


@register_model("mbf")
def mbf(embedding_size: int = 512, input_size=(112, 112)):
    """insightface arcface_torch `mbf` (scale 2, blocks 1-4-6-2)."""
    from facerec.models.mbf_insightface import InsightFaceMobileFaceNet

    return InsightFaceMobileFaceNet(embedding_size, tuple(input_size), (1, 4, 6, 2), 2)


@register_model("mbf_large")
def mbf_large(embedding_size: int = 512, input_size=(112, 112)):
    """insightface arcface_torch `mbf_large` (scale 4, blocks 2-8-12-4)."""
    from facerec.models.mbf_insightface import InsightFaceMobileFaceNet

    return InsightFaceMobileFaceNet(embedding_size, tuple(input_size), (2, 8, 12, 4), 4)
