"""Segmentation models: backbone features + FPN decoder for CNNs and plain ViTs, saved and rebuilt bit for bit,
the backbone loaded strictly from a classifier, and LoRA on the encoder with the decoder trained in full, saved as an
adapter that loads back bit for bit and merges into a plain segmentation model."""

from __future__ import annotations

import json

import pytest
import torch

import hubft
from hubft.errors import ConfigError, ModelError, WeightsError
from hubft.models import SegmentationModel, adapter_base, add_adapter, create_segmentation_model, is_adapter_model

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


@pytest.fixture(scope="module")
def resnet_source(tmp_path_factory):
    """A saved resnet10t classifier, the "pretrained" backbone of the segmentation adapters below."""
    path = tmp_path_factory.mktemp("resnet-source")
    torch.manual_seed(1)
    hubft.save_pretrained(hubft.create_model("resnet10t", label_names=["x", "y"], pretrained=False), path)
    return path


def _trained_segmentation(source, adapter: str = "lora") -> torch.nn.Module:
    """A segmentation adapter model whose adapters and decoder moved away from their initial values."""
    model = create_segmentation_model(f"local-dir:{source}", label_names=LABELS, head_init_seed=0)
    model = add_adapter(model, adapter, r=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.eval()


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_a_segmentation_adapter_loads_back_bit_for_bit_and_merges_into_a_segmentation_model(resnet_source, tmp_path,
                                                                                           adapter):
    from safetensors.torch import load_file

    from hubft.hub.merge import merge_adapter_dir

    model = _trained_segmentation(resnet_source, adapter)
    hubft.save_pretrained(model, tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(".decoder." in k for k in weights) and all(".lora_" in k or ".decoder." in k for k in weights)
    record = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["auto_mapping"]["hubft"]
    assert record["decoder"] == json.loads(json.dumps(model.get_base_model().decoder_record()))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        for load in (hubft.from_pretrained, hubft.create_model, create_segmentation_model):
            loaded = load(f"local-dir:{tmp_path / 'adapter'}")
            assert is_adapter_model(loaded) and isinstance(adapter_base(loaded), SegmentationModel)
            assert loaded.label_names == LABELS and torch.equal(loaded(x), expected)

    report = merge_adapter_dir(tmp_path / "adapter", tmp_path / "merged")
    merged = hubft.from_pretrained(f"local-dir:{report.path}").eval()
    assert isinstance(merged, SegmentationModel) and not is_adapter_model(merged) and merged.label_names == LABELS
    with torch.no_grad():
        # Folding B @ A into W reorders fp32 sums: logits of size ~1 move by about 1e-7, far below 1e-5.
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=0)
    saved = json.loads((report.path / "config.json").read_text())["hubft"]
    assert saved["adapter"]["merged"] is True and saved["source"]["path"] == str(resnet_source)


def test_a_segmentation_adapter_that_cannot_be_rebuilt_as_trained_is_refused(resnet_source, tmp_path):
    hubft.save_pretrained(_trained_segmentation(resnet_source), tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    with pytest.raises(ConfigError, match="it cannot take other labels"):
        create_segmentation_model(f"local-dir:{tmp_path / 'adapter'}", label_names=["x", "y"])
    config = json.loads(config_file.read_text())
    config["auto_mapping"]["hubft"]["decoder"]["feature_indices"] = [2, 3, 4]
    config_file.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"trained with a decoder of feature_indices \[2, 3, 4\], but .* now "
                                         r"gives feature_indices \[1, 2, 3, 4\]\. Fix: load it on the backbone"):
        hubft.from_pretrained(f"local-dir:{tmp_path / 'adapter'}")
    del config["auto_mapping"]["hubft"]["decoder"]  # as an older hubft saved it
    config_file.write_text(json.dumps(config))
    for load in (hubft.from_pretrained, create_segmentation_model):
        with pytest.raises(ModelError, match="does not record its decoder"):
            load(f"local-dir:{tmp_path / 'adapter'}")

    classifier = add_adapter(hubft.create_model(f"local-dir:{resnet_source}", label_names=LABELS), "lora", r=2)
    hubft.save_pretrained(classifier, tmp_path / "classifier")
    with pytest.raises(ModelError, match="is a classifier's adapter, not a segmentation model's"):
        create_segmentation_model(f"local-dir:{tmp_path / 'classifier'}", label_names=LABELS)
