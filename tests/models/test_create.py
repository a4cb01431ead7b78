"""create_model / save_pretrained / from_pretrained over every kind of timm head (see conftest.ARCHS)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import timm
import torch

from hubft.errors import ConfigError
from hubft.models import (
    HEAD_INIT_STD,
    create_model,
    from_pretrained,
    head_module_names,
    head_parameter_names,
    save_pretrained,
)

NEW_LABELS = ["red", "green", "blue"]


def _is_head(key, heads):
    return any(key == h or key.startswith(h + ".") for h in heads)


def _head_state(model):
    heads = head_module_names(model)
    return {k: v for k, v in model.state_dict().items() if _is_head(k, heads)}


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_reheaded_model_keeps_the_body_bit_for_bit(source, batch):
    model = create_model(source.spec, label_names=NEW_LABELS, head_init_seed=7)
    heads = head_module_names(model)
    classifier = model.pretrained_cfg["classifier"]
    assert heads == (classifier if isinstance(classifier, tuple) else (classifier,))
    assert _logits(model, batch).shape == (2, 3)
    state = model.state_dict()
    body = {k for k in state if not _is_head(k, heads)}
    assert body == {k for k in source.state_dict if not _is_head(k, heads)}
    assert [k for k in body if not torch.equal(state[k], source.state_dict[k])] == []
    assert model.label_names == NEW_LABELS
    assert model.pretrained_cfg["label_names"] == tuple(NEW_LABELS)
    assert model.pretrained_cfg["num_classes"] == model.num_classes == 3
    assert model.hubft_source["head_reset"] is True
    assert model.hubft_source["source_num_classes"] == 5


def test_new_head_is_initialised_as_documented_and_seeded(source):
    other_labels = [f"class{i}" for i in range(5)]  # same count as the source, other names: a new head
    torch.manual_seed(123)
    first = create_model(source.spec, label_names=other_labels, head_init_seed=7)
    torch.manual_seed(456)
    second = create_model(source.spec, label_names=other_labels, head_init_seed=7)
    third = create_model(source.spec, label_names=other_labels, head_init_seed=8)
    head, head2, head3 = _head_state(first), _head_state(second), _head_state(third)
    assert head and head.keys() == head2.keys() == head3.keys()
    for key, value in head.items():
        assert value.shape == source.state_dict[key].shape
        assert torch.equal(value, head2[key])
        if key.endswith("bias"):
            assert not value.any()
        elif value.ndim >= 2:
            assert not torch.equal(value, source.state_dict[key])
            assert not torch.equal(value, head3[key])
            assert abs(value.std().item() - HEAD_INIT_STD) < 0.5 * HEAD_INIT_STD
    assert set(head_parameter_names(first)) <= set(head)


def test_save_and_load_round_trip_bit_identical_also_through_timm(source, batch, tmp_path):
    model = create_model(source.spec, label_names=NEW_LABELS, head_init_seed=0, drop_rate=0.1)
    expected = _logits(model, batch)
    save_pretrained(model, tmp_path / "saved")

    loaded = from_pretrained(f"local-dir:{tmp_path / 'saved'}")
    assert torch.equal(_logits(loaded, batch), expected)
    assert loaded.label_names == NEW_LABELS
    assert loaded.hubft_source["head_reset"] is False
    assert loaded.hubft_source["base"]["source"] == source.spec

    by_timm = timm.create_model(f"local-dir:{tmp_path / 'saved'}", pretrained=True)
    assert torch.equal(_logits(by_timm, batch), expected)
    assert list(by_timm.pretrained_cfg["label_names"]) == NEW_LABELS


def test_same_labels_keep_the_head_for_continued_fine_tuning(resnet_source, batch):
    by_names = create_model(resnet_source.spec, label_names=list(resnet_source.labels))
    by_count = create_model(resnet_source.spec, num_classes=5)
    by_default = from_pretrained(resnet_source.spec)
    for model in (by_names, by_count, by_default):
        assert model.hubft_source["head_reset"] is False
        assert model.label_names == list(resnet_source.labels)
        for key, value in _head_state(model).items():
            assert torch.equal(value, resnet_source.state_dict[key])
    assert torch.equal(_logits(by_names, batch), _logits(by_default, batch))


def test_reordered_labels_get_a_new_head(resnet_source):
    model = create_model(resnet_source.spec, label_names=list(reversed(resnet_source.labels)))
    assert model.hubft_source["head_reset"] is True
    assert not torch.equal(model.fc.weight, resnet_source.state_dict["fc.weight"])


def test_num_classes_zero_gives_pooled_features(resnet_source, batch):
    model = create_model(resnet_source.spec, num_classes=0)
    assert _logits(model, batch).shape == (2, model.num_features)
    assert model.label_names is None


def test_timm_name_without_weights_and_kwargs_pass_through(batch):
    model = create_model("test_vit", pretrained=False, num_classes=4, img_size=32, drop_path_rate=0.1,
                         head_init_seed=0)
    assert _logits(model, batch).shape == (2, 4)
    assert model.patch_embed.img_size == (32, 32)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.hubft_source["kind"] == "timm" and model.hubft_source["pretrained"] is False
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the source's preprocessing is carried


def test_in_chans_adapts_the_first_conv_like_timm(resnet_source):
    model = create_model(resnet_source.spec, in_chans=1, label_names=["a", "b"])
    assert model.conv1[0].weight.shape[1] == 1
    assert torch.equal(model.conv1[0].weight, resnet_source.state_dict["conv1.0.weight"].sum(1, keepdim=True))


def test_saved_files_are_safetensors_and_timm_config(resnet_source, tmp_path):
    model = create_model(resnet_source.spec, label_names=NEW_LABELS)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors import safe_open
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnet10t" and config["num_classes"] == 3
    assert config["label_names"] == NEW_LABELS and config["global_pool"] == "avg"
    assert {"num_features", "pretrained_cfg", "hubft"} <= config.keys()
    assert set(config["pretrained_cfg"]) <= {f.name for f in dataclasses.fields(timm.models.PretrainedCfg)}
    assert config["hubft"]["source"]["source"] == resnet_source.spec


def test_save_replaces_files_atomically_and_leaves_nothing_behind(resnet_source, tmp_path, monkeypatch):
    first = create_model(resnet_source.spec, label_names=["a", "b"], head_init_seed=1)
    save_pretrained(first, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(create_model(resnet_source.spec, label_names=["a", "b"], head_init_seed=2), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_save_refuses_label_names_that_do_not_fit(resnet_source, tmp_path):
    model = create_model(resnet_source.spec, label_names=["a", "b"])
    model.label_names = ["a", "b", "c"]
    with pytest.raises(ConfigError, match="num_classes=2 disagrees with the 3 label_names"):
        save_pretrained(model, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


def test_seeded_head_is_the_same_in_any_dtype():
    double = create_model("test_resnet", pretrained=False, num_classes=3, head_init_seed=5, dtype=torch.float64)
    single = create_model("test_resnet", pretrained=False, num_classes=3, head_init_seed=5)
    assert double.fc.weight.dtype == torch.float64
    assert torch.equal(double.fc.weight.float(), single.fc.weight)
