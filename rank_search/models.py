"""Model registry: CIFAR ResNets (He et al. 2016, option A) and every torchvision classifier.

Names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``) so rank
configs address layers by their ``named_modules()`` names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

ModelBuilder = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}
_DEFAULT_INPUT: dict[str, tuple[int, int, int]] = {}


def register_model(name: str, builder: ModelBuilder, input_size: tuple[int, int, int]) -> None:
    """Register ``builder`` under ``name``; duplicate names are refused."""
    if name in _REGISTRY:
        raise ValueError(f"model '{name}' is already registered")
    _REGISTRY[name] = builder
    _DEFAULT_INPUT[name] = input_size


# --- CIFAR ResNets -----------------------------------------------------------------------------


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by stride 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, pad_channels: int) -> None:
        super().__init__()
        self.pad_channels = pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad_channels // 2, self.pad_channels - self.pad_channels // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes - in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 16/32/64 channels in three stages."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _cifar_resnet(depth: int, *, num_classes: int = 10) -> nn.Module:
    return CifarResNet(depth, num_classes=num_classes)


for _depth in (20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}", partial(_cifar_resnet, _depth), (3, 32, 32))


# --- torchvision -------------------------------------------------------------------------------


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_builder(name: str, *, num_classes: int = 1000) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None, num_classes=num_classes)


def _torchvision_input_size(name: str) -> tuple[int, int, int]:
    if name.startswith("inception"):
        return (3, 299, 299)
    return (3, 224, 224)


# --- public API --------------------------------------------------------------------------------


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern`` (CIFAR ResNets first).

    A pattern with a glob character (``*?[``) is a glob over the whole name; any other pattern
    matches names that contain it, ignoring case (``resnet`` finds ``resnet20`` and ``wide_resnet50_2``).
    """
    names = list(_REGISTRY) + [n for n in _torchvision_names() if n not in _REGISTRY]
    if any(c in pattern for c in "*?["):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [n for n in names if pattern.lower() in n.lower()]


def is_model(name: str) -> bool:
    """Whether ``name`` is a known model."""
    return name in _REGISTRY or name in _torchvision_names()


def default_input_size(name: str) -> tuple[int, int, int]:
    """The input size (C, H, W) the model was designed for."""
    if name in _DEFAULT_INPUT:
        return _DEFAULT_INPUT[name]
    _check_name(name)
    return _torchvision_input_size(name)


def _check_name(name: str) -> None:
    if not is_model(name):
        import difflib

        close = difflib.get_close_matches(name, list_models(), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `rank-search models`"
        raise ConfigError(f"unknown model '{name}'{hint}", key="model.name")


def default_num_classes(name: str) -> int:
    """The number of classes the model was designed for: 10 for the CIFAR ResNets, 1000 for torchvision's."""
    _check_name(name)
    return 10 if name in _REGISTRY else 1000


def create_model(name: str, *, num_classes: int | None = None, seed: int | None = None) -> nn.Module:
    """Build model ``name`` with random weights and ``num_classes`` outputs.

    ``num_classes=None`` means the model's own (:func:`default_num_classes`). ``seed`` makes the
    initialization reproducible without touching the global RNG.
    """
    _check_name(name)
    if num_classes is None:
        num_classes = default_num_classes(name)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}", key="model.num_classes")
    builder: ModelBuilder = _REGISTRY.get(name) or partial(_torchvision_builder, name)
    if seed is None:
        return builder(num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(num_classes=num_classes)
