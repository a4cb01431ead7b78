"""The config: dataclasses are the single source of truth for YAML keys and CLI flags."""

import dataclasses
import re
import typing

import pytest

from hubft.cli import build_parser, parse_finetune_args
from hubft.config import FinetuneConfig, config_fields, config_from_dict, config_to_dict, load_config
from hubft.errors import ConfigError, HubftError


def _flags_of(parser) -> set[str]:
    return {opt[2:] for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


def test_cli_flags_are_exactly_the_config_fields():
    import argparse

    from hubft.cli import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    flags = _flags_of(parser) - {"config", "help"}
    sections = typing.get_type_hints(FinetuneConfig)
    fields = {f"{name}.{f.name}" for name, cls in sections.items() for f in dataclasses.fields(cls)}
    assert flags == fields == set(config_fields())


def test_every_field_has_help_text():
    missing = [k for k, f in config_fields().items() if not f.metadata.get("help")]
    assert missing == []


def test_yaml_and_flags_combine_with_flags_winning(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: resnet10t\noptim:\n  lr: 0.01\ntrain:\n  epochs: 2\n")
    c = parse_finetune_args(["--config", str(cfg), "--optim.lr", "3e-4", "--model.freeze", "2",
                             "--loss.options", "{gamma: 2.0}", "--data.classes", "[5, 6, 7]"])
    assert c.model.name == "resnet10t"
    assert c.optim.lr == pytest.approx(3e-4)
    assert c.train.epochs == 2
    assert c.model.freeze == 2
    assert c.loss.options == {"gamma": 2.0}
    assert c.data.classes == [5, 6, 7]
    assert parse_finetune_args(["--model.unfreeze_epoch", "null", "--hub.repo_id", "null"]).model.unfreeze_epoch is None


@pytest.mark.parametrize("data,needle", [
    ({"optim": {"lrr": 1}}, "did you mean"),
    ({"trian": {}}, "'trian'"),
    ({"train": {"epochs": "three"}}, "train.epochs must be int"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision must be one of"),
    ({"optim": {"lr": True}}, "optim.lr must be float"),
    ({"data": {"classes": "not a list: ["}}, "data.classes"),
    ({"train": []}, "must be a mapping"),
])
def test_bad_config_is_refused_with_the_key_named(data, needle):
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    assert needle in str(e.value)
    assert "Fix:" in str(e.value) or "must be a mapping" in str(e.value)


def test_unknown_flag_is_refused():
    with pytest.raises(HubftError) as e:
        parse_finetune_args(["--optim.lrr", "1"])
    assert "--optim.lr" in str(e.value)


def test_round_trip_through_dict():
    c = load_config(None, {"model.name": "test_vit", "schedule.options": "{T_max: 10}"})
    assert config_from_dict(config_to_dict(c)) == c


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_parser_has_every_subcommand():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"finetune", "push", "pull", "plot-lr", "config", "hub"}


def test_a_number_given_as_a_string_is_a_number_where_the_field_also_takes_bool():
    """--model.freeze 1 freezes one stage; only true/false/yes/no are booleans there."""
    from hubft.config import apply_overrides, FinetuneConfig

    assert apply_overrides(FinetuneConfig(), {"model.freeze": "1"}).model.freeze == 1
    assert apply_overrides(FinetuneConfig(), {"model.freeze": "true"}).model.freeze is True
    assert apply_overrides(FinetuneConfig(), {"train.cpu": "1"}).train.cpu is True


# -- rules beside their fields -------------------------------------------------------------------------------------
def _ruled_fields():
    return [(key, f.metadata["rule"]) for key, f in config_fields().items() if f.metadata.get("rule") is not None]


def test_a_rule_is_in_its_field_help_and_every_range_check_has_one():
    ruled = dict(_ruled_fields())
    assert len(ruled) >= 30
    for key, rule in ruled.items():
        assert config_fields()[key].metadata["help"].endswith(f"Must be {rule.text}.")
    for key in ("train.epochs", "optim.lr", "data.eval_fraction", "model.freeze", "train.ema_decay"):
        assert key in ruled


# A value each rule refuses, and one it takes (both of the field's type, so only the rule can refuse it).
BAD_AND_GOOD = {
    "train.epochs": (0, 1), "train.batch_size": (0, 8), "train.eval_batch_size": (0, None),
    "train.grad_accum_steps": (0, 2), "train.keep_checkpoints": (0, 1), "train.checkpoint_every": (0, 5),
    "train.log_every": (0, 1), "train.ema_decay": (1.0, 0.99), "train.max_updates": (0, 3),
    "train.channels_last": ("maybe", "auto"), "train.early_stopping_patience": (0, 2),
    "optim.lr": (0.0, 1e-3), "optim.head_lr": (-1.0, None), "optim.layer_decay": (0.0, 1.0),
    "optim.weight_decay": (-0.1, 0.0), "optim.clip_grad_norm": (-1.0, 1.0),
    "schedule.warmup_steps": (-1, 0), "schedule.warmup_start_factor": (1.5, 0.0),
    "data.eval_fraction": (1.0, 0.5), "data.num_workers": (-1, "auto"), "data.cache": ("sometimes", True),
    "data.image_size": (4, 8), "data.re_prob": (1.5, 1.0), "data.hflip": (-0.1, 0.0), "data.mixup_alpha": (-1.0, 0.0),
    "data.mixup_off_epoch": (-1, 0), "data.max_per_class": (0, 1),
    "model.freeze": (-2, "body"), "model.drop_rate": (1.0, 0.0), "model.drop_path_rate": (-0.1, None),
    "model.adapter": ("qlora", "dora"),
}


@pytest.mark.parametrize("key", sorted(BAD_AND_GOOD))
def test_each_rule_refuses_a_bad_value_with_a_message_made_from_it(key):
    from hubft.config import Rule, apply_overrides, check_config

    bad, good = BAD_AND_GOOD[key]
    rule: Rule = config_fields()[key].metadata["rule"]
    with pytest.raises(ConfigError) as info:
        apply_overrides(FinetuneConfig(), {key: bad})
    assert str(info.value) == f"{key} = {bad!r} is invalid: it must be {rule.text}. Fix: set {key} to {rule.text}"
    check_config(apply_overrides(FinetuneConfig(), {key: good}))


def test_rules_between_fields_sit_on_their_section():
    with pytest.raises(ConfigError, match="model.unfreeze_epoch = 2 is invalid.*together with model.freeze"):
        config_from_dict({"model": {"unfreeze_epoch": 2}})
    with pytest.raises(ConfigError, match="data.color_jitter = 0.4 would be ignored"):
        config_from_dict({"data": {"auto_augment": "rand-m9-mstd0.5", "color_jitter": 0.4}})
    assert config_from_dict({"model": {"freeze": True, "unfreeze_epoch": 2}}).model.unfreezes


@pytest.mark.parametrize("data,needle", [
    ({"model": {"adapter": "lora", "freeze": True}}, "model.freeze = True cannot be combined with model.adapter"),
    ({"model": {"adapter": "lora", "pretrained": False}}, "needs the backbone's pretrained weights"),
    ({"model": {"adapter_options": {"r": 4}}}, "model.adapter_options = {'r': 4} would be ignored"),
    ({"hub": {"merge_adapter": True}}, "hub.merge_adapter = True is invalid: there is no adapter to merge"),
    ({"model": {"adapter": "lora"}, "hub": {"push_checkpoints": True}},
     "hub.push_checkpoints cannot be combined with model.adapter"),
])
def test_adapter_rules_between_fields_and_sections(data, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        config_from_dict(data)


def test_an_adapter_config_reads_from_flags():
    c = parse_finetune_args(["--model.adapter", "dora", "--model.adapter_options", "{r: 16, alpha: 32}",
                             "--hub.merge_adapter", "true"])
    assert (c.model.adapter, c.model.adapter_options, c.hub.merge_adapter) == ("dora", {"r": 16, "alpha": 32}, True)
    assert parse_finetune_args(["--model.adapter", "null"]).model.adapter is None


def test_a_flag_can_correct_a_value_the_file_gets_wrong(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match="train.epochs = 0"):
        load_config(path)
    assert load_config(path, {"train.epochs": "2"}).train.epochs == 2


@pytest.mark.parametrize(("value", "frozen", "stages"), [
    (False, False, None), ("none", False, None), (True, True, None), ("body", True, None), (0, True, 0),
    (3, True, 3),
])
def test_model_freeze_is_decoded_in_one_place(value, frozen, stages):
    from hubft.config import Freeze, ModelConfig

    assert ModelConfig(freeze=value).frozen == Freeze(frozen, stages)
    assert ModelConfig(freeze=value, unfreeze_epoch=1).unfreezes is frozen
