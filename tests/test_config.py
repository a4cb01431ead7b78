"""The config: dataclasses are the single source of truth for YAML keys and CLI flags."""

import dataclasses
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
