"""DomainBed's MNIST network, the featurizer of its ColoredMNIST and RotatedMNIST benchmarks.

Source: Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization" (DomainBed,
arXiv 2007.01434), ``domainbed/networks.py``, class ``MNIST_CNN``. Layer sizes, normalisation
and the order of operations are DomainBed's:

    conv1  Conv2d(C, 64, 3, stride 1, padding 1)    -> ReLU -> GroupNorm(8, 64)
    conv2  Conv2d(64, 128, 3, stride 2, padding 1)  -> ReLU -> GroupNorm(8, 128)
    conv3  Conv2d(128, 128, 3, stride 1, padding 1) -> ReLU -> GroupNorm(8, 128)
    conv4  Conv2d(128, 128, 3, stride 1, padding 1) -> ReLU -> GroupNorm(8, 128)
    AdaptiveAvgPool2d((1, 1)) -> flatten            -> 128 features (n_outputs)

PyTorch's default initialisation, as DomainBed (no re-initialisation). For C = 1 it has
1*64*9 + 64 + 64*128*9 + 128 + 2*(128*128*9 + 128) + 2*64 + 3*2*128 = 370,560 parameters.
GroupNorm has no running statistics, so train and eval mode compute the same function.

Registered as backbone ``"MNIST_CNN"``, the default of RotatedFashionMNIST, RotatedMNIST, ColoredMNIST and
ColoredFashionMNIST (their ``HPARAMS``; ColoredMNIST's images have 2 channels, C = 2).
The hparam ``feature_dim`` is ignored when it is 128 (the network's own width); any other value
appends a linear layer 128 -> feature_dim (not in DomainBed; for using the network elsewhere).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.registry import BACKBONES

N_OUTPUTS = 128


class MNIST_CNN(nn.Module):
    """DomainBed's MNIST featurizer (arXiv 2007.01434, ``domainbed/networks.py``): four 3x3 convolutions
    with ReLU then GroupNorm, global average pooling, 128 features. Built for the feature learning
    of Fumero et al. (arXiv 2304.07939) to be compared with DomainBed's published RotatedMNIST tables."""

    n_outputs = N_OUTPUTS

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.conv4 = nn.Conv2d(128, 128, 3, 1, padding=1)
        self.bn0 = nn.GroupNorm(8, 64)
        self.bn1 = nn.GroupNorm(8, 128)
        self.bn2 = nn.GroupNorm(8, 128)
        self.bn3 = nn.GroupNorm(8, 128)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn0(F.relu(self.conv1(x)))
        x = self.bn1(F.relu(self.conv2(x)))
        x = self.bn2(F.relu(self.conv3(x)))
        x = self.bn3(F.relu(self.conv4(x)))
        return self.avgpool(x).flatten(1)


class ProjectedMNIST_CNN(nn.Module):
    """MNIST_CNN followed by a linear map 128 -> ``n_outputs`` (only when feature_dim != 128)."""

    def __init__(self, in_channels: int, n_outputs: int):
        super().__init__()
        self.body = MNIST_CNN(in_channels)
        self.proj = nn.Linear(N_OUTPUTS, n_outputs)
        self.n_outputs = n_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))


@BACKBONES.register("MNIST_CNN")
def mnist_cnn(input_shape: tuple[int, ...], hparams: dict) -> nn.Module:
    if len(input_shape) != 3:
        from harness.errors import UserError

        raise UserError(f"MNIST_CNN needs image inputs (C, H, W), got shape {input_shape}; use backbone MLP")
    d = int(hparams.get("feature_dim", N_OUTPUTS))
    return MNIST_CNN(input_shape[0]) if d == N_OUTPUTS else ProjectedMNIST_CNN(input_shape[0], d)
