"""Adapters on timm backbones: default targets per family, options, parameter groups, save / load / merge."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import timm
import torch

import hubft
from hubft.errors import ConfigError, ModelError
from hubft.models import add_adapter, default_targets, is_adapter_model, merge_adapter, trainable_parameters
from hubft.optim import param_groups

from .conftest import Arch, images, make_source

LABELS = ["a", "b", "c"]


def _model(name: str, **kwargs) -> torch.nn.Module:
    return hubft.create_model(name, label_names=LABELS, pretrained=False, head_init_seed=0, **kwargs)


# arch, kwargs, family, a module that must be targeted, modules that must not be (stem, depthwise, head)
FAMILIES = [
    ("test_vit", {"img_size": 32}, "vit", "blocks.0.attn.qkv", ["patch_embed.proj", "head"]),
    ("test_convnext", {}, "convnext", "stages.1.blocks.0.mlp.fc2", ["stages.1.blocks.0.conv_dw", "stem.0", "head.fc"]),
    ("resnet10t", {}, "conv", "layer2.0.downsample.1", ["conv1.0", "conv1.3", "fc"]),
    ("test_efficientnet", {}, "conv", "blocks.3.0.conv_pw", ["blocks.3.0.conv_dw", "conv_stem", "classifier"]),
]


@pytest.mark.parametrize("arch,kwargs,family,targeted,left_out", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_default_targets_follow_the_model_family(arch, kwargs, family, targeted, left_out):
    model = _model(arch, **kwargs)
    found, names = default_targets(model)
    assert found.name == family
    assert targeted in names and not set(left_out) & set(names)
    modules = dict(model.named_modules())
    if family == "vit":
        assert all(re.search(r"\.(attn\.(qkv|proj)|mlp\.fc[12])$", n) for n in names)
        assert len(names) == 4 * len(model.blocks)
    if family == "convnext":
        assert all(n.endswith((".mlp.fc1", ".mlp.fc2")) for n in names)
    assert all(getattr(modules[n], "groups", 1) == 1 for n in names)  # never a depthwise convolution


def test_a_model_no_family_fits_is_refused_with_the_candidate_modules(monkeypatch):
    import hubft.models._adapter_targets as targets

    monkeypatch.setattr(targets, "TARGET_FAMILIES", ())
    with pytest.raises(ConfigError, match=r"no default adapter targets for VisionTransformer.*blocks\.\*\.attn\.qkv"):
        add_adapter(_model("test_vit", img_size=32))


@pytest.mark.parametrize("options,needle", [
    ({"rank": 4}, "unknown model.adapter_options key 'rank'. Fix: did you mean r?"),
    ({"alpha": 8, "lora_alpha": 8}, "gives lora_alpha twice"),
    ({"r": 0}, "model.adapter_options.r = 0 is invalid: it must be an integer >= 1"),
    ({"dropout": 1.5}, "model.adapter_options.dropout = 1.5 is invalid"),
    ({"use_dora": True}, "'use_dora' is set by hubft. Fix: choose DoRA with model.adapter: dora"),
    ({"target_modules": ["nope"]}, r"matches no module of VisionTransformer.*blocks\.\*\.attn\.qkv"),
])
def test_bad_options_are_clear_errors_and_leave_the_model_as_it_was(options, needle):
    model = _model("test_vit", img_size=32)
    with pytest.raises(ConfigError, match=needle if "matches" in needle else re.escape(needle)):
        add_adapter(model, "lora", **options)
    assert all(p.requires_grad for p in model.parameters()) and not is_adapter_model(model)


def test_an_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        add_adapter(_model("resnet10t"), "lora", ranks=4)
    assert "valid keys: alpha, dropout, r, target_modules" in str(info.value).replace("lora_alpha, ", "")


@pytest.mark.parametrize("adapter", ["lora", "dora"])
@pytest.mark.parametrize("arch,kwargs", [("test_vit", {"img_size": 32}), ("resnet10t", {})])
def test_only_the_adapters_and_the_head_train_and_the_output_starts_unchanged(arch, kwargs, adapter):
    model = _model(arch, **kwargs).eval()
    x = images()
    with torch.no_grad():
        before = model(x)
    wrapped = add_adapter(model, adapter, r=2).eval()
    with torch.no_grad():
        assert torch.equal(wrapped(x), before)  # lora_B starts at zero
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    heads = {n for n in trainable if ".modules_to_save." in n}
    head = model.pretrained_cfg["classifier"]
    assert heads == {f"base_model.model.{head}.modules_to_save.default.{p}" for p in ("weight", "bias")}
    count, total = trainable_parameters(wrapped)
    assert count == sum(p.numel() for n, p in wrapped.named_parameters() if n in trainable)
    assert total == sum(p.numel() for p in _model(arch, **kwargs).parameters())


def _groups(model: torch.nn.Module, **settings) -> list[dict]:
    """hubft's parameter groups, each with the names of its parameters (``names``)."""
    named = {id(p): n for n, p in model.named_parameters()}
    return [g | {"names": [named[id(p)] for p in g["params"]]} for g in param_groups(model, lr=1e-3, **settings)]


@pytest.mark.parametrize("settings", [{}, {"head_lr": 1e-2, "layer_decay": 0.7, "weight_decay": 0.1}],
                         ids=["plain", "head_lr,layer_decay"])
@pytest.mark.parametrize("arch,kwargs", [("test_vit", {"img_size": 32}), ("test_convnext", {}), ("resnet10t", {})])
def test_parameter_groups_give_an_adapter_the_lr_and_decay_of_the_layer_it_adapts(arch, kwargs, settings):
    """Each trainable parameter of the adapter model gets the LR and weight decay that the same layer's weight
    (for lora_A / lora_B) or the head's own parameter gets in the model without peft."""
    plain = {n: g for g in _groups(_model(arch, **kwargs), **settings) for n in g["names"]}
    wrapped = add_adapter(_model(arch, **kwargs), "lora", r=2)
    groups = _groups(wrapped, **settings)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in wrapped.parameters() if p.requires_grad)
    for group in groups:
        for name in group["names"]:
            name = name.removeprefix("base_model.model.")
            same = re.sub(r"\.lora_[AB]\.default\.weight$", ".weight", name).replace(".modules_to_save.default", "")
            assert (group["lr"], group["weight_decay"]) == (plain[same]["lr"], plain[same]["weight_decay"]), name
    assert {g["name"] for g in groups} >= {"head.decay", "head.no_decay"}


def test_dora_magnitudes_are_not_decayed():
    groups = _groups(add_adapter(_model("resnet10t"), "dora", r=2), weight_decay=0.1)
    decays = {n: g["weight_decay"] for g in groups for n in g["names"]}
    magnitudes = [n for n in decays if "lora_magnitude_vector" in n]
    assert magnitudes and all(decays[n] == 0.0 for n in magnitudes)
    assert all(decays[n] == 0.1 for n in decays if ".lora_A." in n)


@pytest.fixture(scope="module")
def vit_source(tmp_path_factory):
    return make_source(Arch("test_vit", "ViT token head", {"img_size": 32}), tmp_path_factory.mktemp("vit-source"))


def _trained(source, adapter: str = "lora") -> torch.nn.Module:
    """An adapter model on ``source`` whose adapters and head moved away from their initial values."""
    model = add_adapter(hubft.create_model(source.spec, label_names=LABELS, head_init_seed=0), adapter, r=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model.eval()


def test_an_adapter_saves_alone_and_loads_with_peft_alone(vit_source, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    model = _trained(vit_source)
    hubft.save_pretrained(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all(".lora_" in k or ".head." in k for k in weights)  # never the base weights
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(vit_source.directory)
    assert config["modules_to_save"] == ["head"]
    assert config["auto_mapping"]["hubft"]["label_names"] == LABELS

    base = timm.create_model(vit_source.spec, pretrained=True, num_classes=len(LABELS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "upgrade peft" warning about keys peft does not know
        alone = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(alone(images()), model(images()))


@pytest.mark.parametrize("adapter", ["lora", "dora"])
def test_hubft_loads_an_adapter_with_its_backbone_and_merges_it_into_a_timm_model(vit_source, tmp_path, adapter):
    model = _trained(vit_source, adapter)
    hubft.save_pretrained(model, tmp_path / "adapter")
    loaded = hubft.from_pretrained(f"local-dir:{tmp_path / 'adapter'}")
    assert is_adapter_model(loaded) and loaded.label_names == LABELS and not loaded.training
    x = images()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(loaded(x), expected)
        merged = merge_adapter(loaded).eval()
        assert not is_adapter_model(merged) and all(p.requires_grad for p in merged.parameters())
        hubft.save_pretrained(merged, tmp_path / "merged")
        plain = timm.create_model(f"local-dir:{tmp_path / 'merged'}", pretrained=True).eval()
        torch.testing.assert_close(plain(x), expected, atol=1e-5, rtol=0)
    saved = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert saved["hubft"]["adapter"]["merged"] is True and saved["hubft"]["source"]["path"] == str(vit_source.directory)


def test_an_adapter_keeps_its_head(vit_source, tmp_path):
    hubft.save_pretrained(_trained(vit_source), tmp_path / "adapter")
    with pytest.raises(ConfigError, match="it cannot take other labels. Fix: merge it first"):
        hubft.create_model(f"local-dir:{tmp_path / 'adapter'}", label_names=["x", "y"])
    with pytest.raises(ConfigError, match="only exists on top of its backbone's weights"):
        hubft.create_model(f"local-dir:{tmp_path / 'adapter'}", pretrained=False)


def test_an_adapter_hubft_did_not_write_is_named_with_the_peft_way_to_load_it(vit_source, tmp_path):
    model = _trained(vit_source)
    model.save_pretrained(tmp_path / "foreign")  # peft's own files: no hubft record
    with pytest.raises(ModelError, match="a peft adapter that hubft did not write.*PeftModel.from_pretrained"):
        hubft.from_pretrained(f"local-dir:{tmp_path / 'foreign'}")


def test_a_wrapped_or_frozen_model_is_refused():
    model = add_adapter(_model("resnet10t"))
    with pytest.raises(ModelError, match="already wrapped by PeftModel"):
        add_adapter(model)
    frozen = _model("resnet10t")
    hubft.freeze(frozen)
    with pytest.raises(ModelError, match="frozen model"):
        add_adapter(frozen)
