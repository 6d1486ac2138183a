"""Encoders shared by every method (docs/methods.md, "Shared model parts").

An encoder maps one modality's batch to features [B, D] and exposes ``out_dim`` = D.
Inputs: audio spectrograms [B, 1, F, T]; visual frames [B, K, 3, H, W] (each frame
encoded by a 2D network, then averaged over frames).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import ResNet, resnet18

from methods.parts.registry import ENCODERS, MethodConfigError, register_encoder

KINDS = ("audio", "visual")


def init_weights(module: nn.Module) -> None:
    """The init every reference uses: Kaiming-normal (fan_out) conv, BN 1/0, Xavier Linear."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FrameEncoder(nn.Module):
    """Wraps a 2D network: audio [B,C,F,T] passes through; visual [B,K,3,H,W] is encoded
    frame by frame (one batched call over B*K frames) and averaged over the K frames."""

    def __init__(self, net: nn.Module, out_dim: int, kind: str) -> None:
        super().__init__()
        self.net = net
        self.out_dim = out_dim
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "visual":
            b, k = x.shape[:2]
            return self.net(x.flatten(0, 1)).view(b, k, -1).mean(dim=1)
        return self.net(x)

    def stages(self) -> list[nn.Module]:
        """The 2D network as its four stages, in order (not registered again: the modules are
        the encoder's own). Running them one after the other, then a global average pool
        (and, for visual input, the mean over frames), is `forward`; the feature maps between
        them are what intermediate-fusion methods join (Greedy's MMTM blocks). ResNet18:
        stem + layer1, layer2, layer3, layer4; the small CNN: its four conv blocks. Raises
        MethodConfigError for a network whose stages are unknown."""
        net = self.net
        if isinstance(net, ResNet):
            stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
            return [stem, net.layer2, net.layer3, net.layer4]
        if isinstance(net, nn.Sequential) and len(net) == 14:  # build_small_cnn's layout
            return [nn.Sequential(*list(net)[3 * i : 3 * i + 3]) for i in range(4)]
        raise MethodConfigError(
            f"encoder network {type(net).__name__} has no known stages to join; the encoders "
            "with stages are resnet18 and small"
        )


def _in_channels(kind: str) -> int:
    if kind not in KINDS:
        raise MethodConfigError(f"no encoder for modality kind {kind!r}; kinds: {', '.join(KINDS)}")
    return 1 if kind == "audio" else 3


@register_encoder("resnet18")
def build_resnet18(kind: str, input_shape: Sequence[int]) -> FrameEncoder:
    """ResNet18 from scratch (He et al. 2016), as in OGM-GE/PMR/AGM/MIE reference code:
    7x7 stride-2 stem, max-pool, four stages, global average pool -> 512."""
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(_in_channels(kind), 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    init_weights(net)
    return FrameEncoder(net, 512, kind)


@register_encoder("small")
def build_small_cnn(kind: str, input_shape: Sequence[int], width: int = 32) -> FrameEncoder:
    """A four-block CNN for the built-in small datasets (inputs of 8-64 pixels a side),
    so that a CPU run takes minutes: conv3x3-BN-ReLU blocks, stride 2 after the first,
    global average pool -> 4 * width features."""
    c = _in_channels(kind)
    widths = [width, width, 2 * width, 4 * width]
    layers: list[nn.Module] = []
    for i, w in enumerate(widths):
        layers += [
            nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    net = nn.Sequential(*layers)
    init_weights(net)
    return FrameEncoder(net, widths[-1], kind)


def create_encoder(name: str, kind: str, input_shape: Sequence[int]) -> FrameEncoder:
    """Build the registered encoder `name` for a modality of `kind` ("audio"|"visual")."""
    return ENCODERS.get(name)(kind, input_shape)


def list_encoders(pattern: str = "*") -> list[str]:
    return ENCODERS.names(pattern)
