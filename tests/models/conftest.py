"""Tiny stand-ins for pretrained sources, one per kind of timm head.

Each source is a timm model with random weights (``pretrained=False``) whose BatchNorm statistics were moved by a
training-mode forward pass, saved with timm's own ``save_for_hf`` the way a timm-pushed Hub repo is laid out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import timm
import torch
from timm.models import save_for_hf

SOURCE_LABELS = ["ant", "bee", "cat", "dog", "eel"]


@dataclass(frozen=True)
class Arch:
    name: str
    head_kind: str
    kwargs: dict = field(default_factory=dict)


ARCHS = [
    Arch("resnet10t", "linear fc"),
    Arch("test_efficientnet", "linear classifier"),
    Arch("mobilenetv3_small_050", "conv_head + linear classifier"),
    Arch("test_convnext", "head.fc after head.norm and a pre-logits MLP", {"head_hidden_size": 16}),
    Arch("test_vit", "ViT token head", {"img_size": 32}),
    Arch("deit_tiny_distilled_patch16_224", "distilled head + head_dist", {"img_size": 32, "depth": 2}),
    Arch("regnetx_002", "ClassifierHead head.fc"),
    Arch("dla46_c", "1x1 conv classifier fc"),
    Arch("levit_128s", "distilled NormLinear heads (BatchNorm1d inside)", {"img_size": 32}),
]


@dataclass(frozen=True)
class Source:
    arch: Arch
    directory: Path
    state_dict: dict[str, torch.Tensor]
    labels: tuple[str, ...] = tuple(SOURCE_LABELS)

    @property
    def spec(self) -> str:
        return f"local-dir:{self.directory}"


def images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def make_source(arch: Arch, directory: Path) -> Source:
    torch.manual_seed(1)
    model = timm.create_model(arch.name, pretrained=False, num_classes=len(SOURCE_LABELS), **arch.kwargs)
    model.train()
    with torch.no_grad():
        model(images(4, seed=1))
    model.eval()
    save_for_hf(model, directory, safe_serialization=True, model_config={"label_names": SOURCE_LABELS})
    return Source(arch, directory, {k: v.clone() for k, v in model.state_dict().items()})


@pytest.fixture(scope="session", params=ARCHS, ids=[a.name for a in ARCHS])
def source(request, tmp_path_factory) -> Source:
    arch = request.param
    return make_source(arch, tmp_path_factory.mktemp(arch.name))


@pytest.fixture(scope="session")
def resnet_source(tmp_path_factory) -> Source:
    """A single small source for tests that are about hubft's logic rather than about head kinds."""
    return make_source(ARCHS[0], tmp_path_factory.mktemp("resnet-single"))


@pytest.fixture
def batch() -> torch.Tensor:
    """A fixed batch of two 32x32 images, independent of the global RNG."""
    return images()


@pytest.fixture
def fresh_source(tmp_path):
    """Build a new source directory (for tests that corrupt or edit it): fresh_source(arch_name, **kwargs)."""
    def build(name: str = "resnet10t", **kwargs) -> Source:
        return make_source(Arch(name, "test", kwargs), tmp_path / "source")
    return build
