"""Segmentation models: backbone features + FPN decoder for CNNs and plain ViTs, saved and rebuilt bit for bit,
the backbone loaded strictly from a classifier, and LoRA on the encoder with the decoder trained in full."""

from __future__ import annotations

import pytest
import torch

import hubft
from hubft.errors import WeightsError
from hubft.models import SegmentationModel, add_adapter, create_segmentation_model

LABELS = ["bg", "a", "b"]


@pytest.mark.parametrize("name, kwargs", [("resnet10t", {}), ("test_vit", {"img_size": 32})])
def test_logits_are_at_input_size_and_survive_save_and_load(name, kwargs, tmp_path):
    model = create_segmentation_model(name, label_names=LABELS, pretrained=False, head_init_seed=0, **kwargs).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 3, 32, 32)
    hubft.save_pretrained(model, tmp_path)
    again = hubft.from_pretrained(f"local-dir:{tmp_path}").eval()
    assert isinstance(again, SegmentationModel) and again.label_names == LABELS
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    relabelled = hubft.create_model(f"local-dir:{tmp_path}", label_names=["x", "y"], head_init_seed=1)
    assert relabelled.num_classes == 2 and relabelled.label_names == ["x", "y"]
    kept, saved = relabelled.encoder.state_dict(), model.encoder.state_dict()
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in saved)


def test_the_backbone_loads_strictly_from_a_classifier(tmp_path):
    classifier = hubft.create_model("resnet10t", label_names=["x", "y"], pretrained=False)
    hubft.save_pretrained(classifier, tmp_path / "cls")
    seg = create_segmentation_model(f"local-dir:{tmp_path / 'cls'}", label_names=LABELS)
    assert torch.equal(seg.encoder.conv1[0].weight, classifier.conv1[0].weight)
    state = classifier.state_dict()
    state.pop("layer4.0.conv1.weight")
    from hubft.models._weights import write_safetensors

    write_safetensors(state, tmp_path / "cls" / "model.safetensors")
    with pytest.raises(WeightsError, match="layer4.0.conv1.weight"):
        create_segmentation_model(f"local-dir:{tmp_path / 'cls'}", label_names=LABELS)


def test_lora_adapts_the_encoder_and_trains_the_decoder_fully():
    model = create_segmentation_model("test_vit", label_names=LABELS, pretrained=False, img_size=32)
    adapted = add_adapter(model, "lora")
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or ".decoder." in n for n in trainable)
    assert any(".decoder." in n for n in trainable) and any("encoder.blocks" in n for n in trainable)
    assert adapted(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
