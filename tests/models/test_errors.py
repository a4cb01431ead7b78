"""Bad input gets a one-line hubft error naming the bad thing and the fix, never a traceback from torch."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from hubft.errors import ConfigError, ModelError, WeightsError
from hubft.models import create_model, from_pretrained


def _one_line_with_fix(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text and "Fix: " in text
    return text


@pytest.mark.parametrize("kwargs, text", [
    ({"num_classes": 3, "label_names": ["a", "b"]}, "num_classes=3 disagrees with the 2 label_names"),
    ({"label_names": ["a", "b", "a"]}, "duplicate labels: 'a'"),
    ({"label_names": "ab"}, "not a list of strings"),
    ({"label_names": ["a", ""]}, "not a non-empty string"),
    ({"label_names": []}, "label_names is empty"),
    ({"num_classes": -1}, "num_classes=-1"),
    ({"head_init_seed": "7"}, "head_init_seed='7'"),
    ({"checkpoint_path": "x.pth"}, "checkpoint_path=: it loads pickle"),
    ({"features_only": True}, "features_only="),
    ({"not_a_timm_argument": 1}, "not_a_timm_argument"),
], ids=["count-vs-names", "duplicates", "string", "empty-name", "no-names", "negative", "seed", "pickle-ckpt",
        "features-only", "unknown-kwarg"])
def test_bad_arguments(kwargs, text):
    with pytest.raises(ConfigError) as info:
        create_model("test_resnet", pretrained=False, **kwargs)
    assert text in _one_line_with_fix(info.value)


def test_from_pretrained_takes_no_pretrained_flag(resnet_source):
    with pytest.raises(ConfigError, match="pretrained="):
        from_pretrained(resnet_source.spec, pretrained=False)


def _copy_source(source, directory):
    directory.mkdir()
    for name in ("config.json", "model.safetensors"):
        (directory / name).write_bytes((source.directory / name).read_bytes())
    return directory


def test_missing_weights_file(resnet_source, tmp_path):
    directory = _copy_source(resnet_source, tmp_path / "src")
    (directory / "model.safetensors").unlink()
    with pytest.raises(WeightsError) as info:
        create_model(f"local-dir:{directory}")
    assert "has no model.safetensors" in _one_line_with_fix(info.value) and str(directory) in str(info.value)
    assert create_model(f"local-dir:{directory}", pretrained=False).num_classes == 5  # config alone suffices


def test_pickle_only_source_is_refused(resnet_source, tmp_path):
    directory = _copy_source(resnet_source, tmp_path / "src")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(WeightsError) as info:
        create_model(str(directory))
    text = _one_line_with_fix(info.value)
    assert "pytorch_model.bin" in text and "pickle" in text


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_weights(resnet_source, tmp_path, damage):
    directory = _copy_source(resnet_source, tmp_path / "src")
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13" * 4096, "empty": b""}[damage])
    with pytest.raises(WeightsError) as info:
        create_model(f"local-dir:{directory}", num_classes=2)
    assert str(weights) in _one_line_with_fix(info.value) and "truncated or not a safetensors" in str(info.value)


def _edit_weights(directory, edit):
    weights = directory / "model.safetensors"
    state = safetensors.torch.load_file(weights)
    edit(state)
    safetensors.torch.save_file(state, weights)


def test_body_shape_mismatch_names_the_key_and_both_shapes(resnet_source, tmp_path):
    directory = _copy_source(resnet_source, tmp_path / "src")
    _edit_weights(directory, lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(8, 8, 3, 3)}))
    with pytest.raises(WeightsError) as info:
        create_model(f"local-dir:{directory}", num_classes=2)
    text = _one_line_with_fix(info.value)
    assert "layer1.0.conv1.weight (8, 8, 3, 3) in the file vs (64, 64, 3, 3) in the model" in text


def test_missing_and_unexpected_keys_are_named(resnet_source, tmp_path):
    directory = _copy_source(resnet_source, tmp_path / "src")

    def edit(state):
        del state["layer4.0.bn1.running_var"]
        state["layer9.extra"] = torch.zeros(1)

    _edit_weights(directory, edit)
    with pytest.raises(WeightsError) as info:
        create_model(f"local-dir:{directory}", num_classes=2)
    text = _one_line_with_fix(info.value)
    assert "missing keys: layer4.0.bn1.running_var" in text and "unexpected keys: layer9.extra" in text


def test_a_kept_head_is_loaded_strictly_too(resnet_source, tmp_path):
    directory = _copy_source(resnet_source, tmp_path / "src")
    _edit_weights(directory, lambda s: s.update({"fc.bias": torch.zeros(4)}))
    with pytest.raises(WeightsError, match=r"fc.bias \(4,\) in the file vs \(5,\)"):
        from_pretrained(f"local-dir:{directory}")
    # a head that is replaced anyway may have any shape
    assert create_model(f"local-dir:{directory}", num_classes=2).num_classes == 2


@pytest.mark.parametrize("config, text", [
    ("{not json", "not valid JSON"),
    (json.dumps(["a list"]), "no 'architecture'"),
    (json.dumps({"architecture": "resnet10tt", "num_classes": 5, "pretrained_cfg": {}}),
     "'resnet10tt', which timm"),
    (json.dumps({"architecture": "resnet10t", "num_classes": 5, "pretrained_cfg": {"brand_new_field": 1}}),
     "brand_new_field"),
    (json.dumps({"architecture": "resnet10t", "num_classes": "five", "pretrained_cfg": {}}),
     "num_classes='five'"),
], ids=["not-json", "not-object", "unknown-arch", "unknown-cfg-field", "bad-num-classes"])
def test_bad_config_json(resnet_source, tmp_path, config, text):
    directory = _copy_source(resnet_source, tmp_path / "src")
    (directory / "config.json").write_text(config)
    with pytest.raises(ModelError) as info:
        create_model(f"local-dir:{directory}")
    assert text in _one_line_with_fix(info.value) and "config.json" in str(info.value)


def test_missing_directory_file_and_config(resnet_source, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        create_model(f"local-dir:{tmp_path / 'nowhere'}")
    with pytest.raises(ModelError, match="is a file, not a directory"):
        create_model(str(resnet_source.directory / "model.safetensors"))
    directory = _copy_source(resnet_source, tmp_path / "src")
    (directory / "config.json").unlink()
    with pytest.raises(ModelError, match="has no config.json"):
        create_model(str(directory))


def test_timm_name_without_pretrained_weights():
    with pytest.raises(ModelError) as info:
        create_model("test_resnet.nope")
    assert "unknown pretrained tag 'nope'" in _one_line_with_fix(info.value)
