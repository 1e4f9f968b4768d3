"""insightface's MobileFaceNet variant (`mbf`, `mbf_large` of arcface_torch), key-compatible.

A widened MobileFaceNet (Chen et al., CCBR 2018) as arcface_torch trains it: channel widths
scaled by `scale` (2 for `mbf`, 4 for `mbf_large`), stage depths `blocks`, and fixed inner
widths of the bottlenecks (128, 256, 512) independent of `scale` — which is why these are
not the paper's model (`facerec.models.mobilefacenet`). The module nesting (`layers.N.layers...`,
`conv_sep`, `features.layers`) reproduces arcface_torch's parameter names so its `backbone.pth`
files load with strict=True.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNAct(nn.Module):
    """conv -> BN -> optional PReLU, as `layers` (arcface_torch's ConvBlock / LinearBlock)."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            mods.append(nn.PReLU(cout))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Bottleneck(nn.Module):
    """1x1 to `inner` -> depthwise 3x3 (stride) -> linear 1x1 to `cout`, optionally residual."""

    def __init__(self, cin: int, cout: int, inner: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBNAct(cin, inner), ConvBNAct(inner, inner, 3, stride, 1, groups=inner), ConvBNAct(inner, cout, act=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class Stage(nn.Module):
    """`n` residual bottlenecks of constant width."""

    def __init__(self, c: int, n: int, inner: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[Bottleneck(c, c, inner, 1, True) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GDCHead(nn.Module):
    """Global depthwise conv over the whole map -> flatten -> linear -> BN1d."""

    def __init__(self, embedding_size: int, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ConvBNAct(512, 512, 1, groups=512, act=False), nn.Flatten(), nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        self.layers[0].layers[0] = nn.Conv2d(512, 512, kernel, groups=512, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class InsightFaceMobileFaceNet(nn.Module):
    """arcface_torch's MobileFaceNet: [B, 3, H, W] -> [B, embedding_size]."""

    def __init__(self, embedding_size: int = 512, input_size: tuple[int, int] = (112, 112),
                 blocks: tuple[int, int, int, int] = (1, 4, 6, 2), scale: int = 2) -> None:
        super().__init__()
        h, w = input_size
        if h % 16 or w % 16:
            raise ValueError(f"mbf input_size must be multiples of 16, got {input_size}")
        c1, c2 = 64 * scale, 128 * scale
        stem2 = (ConvBNAct(c1, c1, 3, 1, 1, groups=64) if blocks[0] == 1 else Stage(c1, blocks[0], 128))
        self.layers = nn.ModuleList([
            ConvBNAct(3, c1, 3, 2, 1), stem2,
            Bottleneck(c1, c1, 128, 2, False), Stage(c1, blocks[1], 128),
            Bottleneck(c1, c2, 256, 2, False), Stage(c2, blocks[2], 256),
            Bottleneck(c2, c2, 512, 2, False), Stage(c2, blocks[3], 256),
        ])
        self.conv_sep = ConvBNAct(c2, 512)
        self.features = GDCHead(embedding_size, (h // 16, w // 16))
        self.embedding_size = embedding_size
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.conv_sep(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
