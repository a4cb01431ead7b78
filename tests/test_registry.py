"""One registry shape for every family: the same case rule, listing and errors for losses, optimizers, schedules
and tasks (parametrised over the families, so a new one is covered by adding a row)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hubft
from hubft.errors import ConfigError
from hubft.registry import Registry, import_object, normalize_name


@dataclasses.dataclass(frozen=True)
class Family:
    kind: str
    lister: object
    getter: object
    folded: tuple[str, str]  # (a spelling that is not registered, the name it must resolve to)


def _families() -> list[Family]:
    from hubft.losses import get_loss_info
    from hubft.optim import get_optimizer_info, get_scheduler_info

    families = [
        Family("loss", hubft.list_losses, get_loss_info, ("Focal", "focal")),
        Family("optimizer", hubft.list_optimizers, get_optimizer_info, ("Rprop".upper(), "Rprop")),
        Family("schedule", hubft.list_schedulers, get_scheduler_info, ("Cosine", "cosine")),
    ]
    if hasattr(hubft, "list_tasks"):
        families.append(Family("task", hubft.list_tasks, hubft.get_task, ("Image_Classification",
                                                                            "image-classification")))
    return families


FAMILIES = _families()


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.kind)
def test_every_listed_name_gets_its_own_record(family):
    names = family.lister()
    assert names == sorted(names) and len(names) == len(set(names)) and names
    for name in names:
        assert family.getter(name).name == name


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.kind)
def test_case_and_dashes_are_ignored_when_the_exact_name_is_not_registered(family):
    spelled, registered = family.folded
    assert spelled not in family.lister()
    assert family.getter(spelled).name == registered


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.kind)
def test_an_unknown_name_is_a_config_error_with_close_matches(family):
    real = family.folded[1]
    typo = real[:-1] + ("x" if real[-1] != "x" else "y")
    with pytest.raises(ConfigError) as info:
        family.getter(typo)
    text = str(info.value)
    assert f"unknown {family.kind} {typo!r}" in text and f"did you mean {real!r}" in text


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.kind)
def test_listing_filters_by_a_pattern_ignoring_case(family):
    names = family.lister()
    first = names[0]
    assert family.lister(first.upper()) == [n for n in names if n.lower() == first.lower()]
    assert family.lister(None) == names
    assert family.lister("*zzz-no-such-name*") == []


def test_an_exact_name_wins_and_an_ambiguous_folded_name_lists_every_candidate():
    from hubft.optim import get_optimizer_info

    assert get_optimizer_info("SGD").optimizer_class is torch.optim.SGD
    assert get_optimizer_info("sgd").defaults.get("momentum") == 0.9  # timm's Nesterov SGD
    with pytest.raises(ConfigError, match="ambiguous.*'SGD', 'sgd'"):
        get_optimizer_info("Sgd")


def test_a_schedule_named_with_capitals_works_from_the_config(tmp_path):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = hubft.create_scheduler(opt, "Cosine", total_updates=10)
    assert sched.name == "cosine"
    assert hubft.create_loss("Cross-Entropy").__class__.__name__ == "CrossEntropyLoss"


def test_an_optimizer_class_is_named_by_module_and_attribute():
    model = torch.nn.Linear(3, 2)
    opt = hubft.create_optimizer(hubft.param_groups(model, lr=0.1), "torch.optim:Adagrad")
    assert type(opt) is torch.optim.Adagrad
    with pytest.raises(ConfigError, match="not a torch.optim.Optimizer subclass"):
        hubft.create_optimizer(hubft.param_groups(model, lr=0.1), "torch.nn:Linear")


@dataclasses.dataclass(frozen=True)
class _Record:
    name: str


@pytest.mark.parametrize("name", ["", "has space", "pkg:attr", " lead", "9lives", None])
def test_malformed_names_are_refused(name):
    with pytest.raises(ConfigError, match="not valid"):
        Registry("thing", "list_things").register(_Record(name))


def test_registering_a_taken_name_needs_overwrite_and_copies_do_not_leak():
    registry = Registry("thing", "list_things")
    registry.register(_Record("a"))
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(_Record("a"))
    scratch = registry.copy()
    scratch.register(_Record("b"))
    assert registry.names() == ["a"] and scratch.names() == ["a", "b"]


def test_an_error_lists_every_name_of_a_small_family_and_names_the_lister_of_a_large_one():
    small = Registry("thing", "list_things", hint="or write your own")
    for n in ("alpha", "beta"):
        small.register(_Record(n))
    with pytest.raises(ConfigError, match=r"registered things: alpha, beta; or write your own"):
        small.get("gamma")
    large = Registry("thing", "list_things")
    for i in range(40):
        large.register(_Record(f"n{i}"))
    with pytest.raises(ConfigError, match=r"list_things\(\) lists all 40 names"):
        large.get("zz")


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("no_such_package_xyz.mod:thing", "cannot import module 'no_such_package_xyz.mod'"),
        ("torch.nn:Linea", "has no attribute 'Linea'.*did you mean 'Linear'"),
        ("torch.nn:", "not of the form"),
        (":Linear", "not of the form"),
        ("torch.nn:a:b", "not of the form"),
    ],
)
def test_import_object_names_what_is_wrong(path, match):
    with pytest.raises(ConfigError, match=match):
        import_object(path, what="thing")
    assert import_object("torch.nn:Linear") is torch.nn.Linear


def test_normalize_name_folds_case_spaces_and_dashes():
    assert normalize_name(" Soft-Target-Cross-Entropy ") == "soft_target_cross_entropy"
