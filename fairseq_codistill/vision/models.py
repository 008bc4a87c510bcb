"""Image classifiers: torchvision's ResNets when torchvision is importable, and small
built-in ResNets otherwise.

The built-in ones exist because torchvision is an optional dependency: its PyPI wheels
are CUDA builds tied to one torch version, so a CPU-only environment (the tests, a
laptop) often cannot install it next to its torch. They are the CIFAR ResNets of He et
al. 2016 (3 stages of 16/32/64 channels, 6n+2 layers), small enough to train a few
dozen updates on one CPU core in seconds.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import nn

# name -> blocks per stage (depth 6n + 2)
BUILTIN_ARCHS = {"resnet8": 1, "resnet14": 2, "resnet20": 3}


def torchvision_or_none():
    """torchvision if it imports cleanly; None if it is missing or broken (a CUDA wheel
    next to a CPU torch fails at import with an OSError or RuntimeError)."""
    try:
        import torchvision  # lazy: optional dependency, see the module docstring
    except (ImportError, OSError, RuntimeError):
        return None
    return torchvision


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        # Goyal et al.: the last BN of each residual block starts at zero, so every
        # block starts as the identity and the deep net trains like a shallow one.
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, sec. 4.2); global average pooling makes it accept
    any image size, though its stride-1 stem is slow at ImageNet's 224 px."""

    def __init__(self, blocks_per_stage: int, num_classes: int, widths=(16, 32, 64)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers: List[nn.Module] = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                layers.append(BasicBlock(in_ch, width, stride=2 if i > 0 and j == 0 else 1))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C)
        x = self.layers(self.stem(x))  # (B, 64, H/4, W/4)
        return self.fc(x.mean(dim=(2, 3)))  # (B, 64) -> (B, C)


def arch_error(arch: str) -> Optional[str]:
    """Why ``--arch`` cannot be built here, or None if it can."""
    if arch in BUILTIN_ARCHS:
        return None
    tv = torchvision_or_none()
    if tv is None:
        return (f"--arch {arch} needs torchvision, which is not importable here; "
                f"use a built-in --arch ({', '.join(BUILTIN_ARCHS)}) or install torchvision")
    if arch not in tv.models.list_models(module=tv.models):
        return f"--arch {arch} is neither built in ({', '.join(BUILTIN_ARCHS)}) nor a torchvision classifier"
    return None


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised classifier with ``num_classes`` outputs."""
    error = arch_error(arch)
    if error:
        raise ValueError(error)
    if arch in BUILTIN_ARCHS:
        return SmallResNet(BUILTIN_ARCHS[arch], num_classes)
    tv = torchvision_or_none()
    # zero_init_residual: Goyal et al.'s initialisation, as in the built-in blocks.
    kwargs = {"zero_init_residual": True} if arch.startswith(("resnet", "resnext", "wide_resnet")) else {}
    return tv.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
