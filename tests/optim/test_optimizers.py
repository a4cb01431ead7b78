import pytest
import timm.optim.kron
import torch
from torch import nn

from hubft.errors import ConfigError
from hubft.optim import (
    OptimizerInfo,
    create_optimizer,
    fused_options,
    get_optimizer_info,
    list_optimizers,
    param_groups,
    register_optimizer,
)


def _tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    model.pretrained_cfg = {"classifier": "4"}
    return model


pytestmark = pytest.mark.filterwarnings(
    "ignore:Using backward\\(\\) with create_graph=True:UserWarning",  # AdaHessian needs it
    "ignore:It is highly recommended to have 'opt_einsum':UserWarning",
)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, second_order: bool) -> None:
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 1])
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward(create_graph=second_order)
    optimizer.step()


@pytest.mark.parametrize("name", list_optimizers())
def test_every_registered_optimizer_builds_and_steps(name, monkeypatch):
    # Kron torch.compile()s its maths on first use (about a minute on 2 CPU cores); eager runs the same steps.
    monkeypatch.setattr(timm.optim.kron, "has_dynamo", False)
    info = get_optimizer_info(name)
    model = _tiny_model()
    groups = param_groups(model, lr=1e-2, head_lr=5e-2, weight_decay=0.01)
    if "weight_decay" not in (info.accepted_kwargs() or ("weight_decay",)):
        for g in groups:
            g["weight_decay"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = create_optimizer(groups, name)
    assert isinstance(optimizer, info.optimizer_class)
    # Each group keeps its own LR and name; the caller's dicts are not modified.
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in groups]
    assert [g["name"] for g in optimizer.param_groups] == [g["name"] for g in groups]
    assert all(set(g) == {"name", "params", "lr", "weight_decay"} for g in groups)
    for _ in range(2):
        _train_step(model, optimizer, info.second_order)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))


def test_registry_holds_torch_and_timm_names():
    names = list_optimizers()
    assert {"SGD", "AdamW", "RMSprop", "Rprop", "ASGD", "sgd", "adamw", "lamb", "lion", "adahessian"} <= set(names)
    assert not {"LBFGS", "SparseAdam", "bnbadamw8bit", "fusedadam"} & set(names)
    assert list_optimizers("*lamb*") == [n for n in names if "lamb" in n]
    # Torch names keep torch's defaults; timm's lower-case names keep timm's (Nesterov SGD, momentum 0.9).
    assert get_optimizer_info("SGD").defaults == {}
    assert get_optimizer_info("sgd").defaults == {"nesterov": True, "momentum": 0.9}
    assert get_optimizer_info("adahessian").second_order


def test_model_input_and_precedence():
    model = _tiny_model()
    optimizer = create_optimizer(model, "sgd", lr=0.1, weight_decay=0.01, momentum=0.5)
    assert {g["name"] for g in optimizer.param_groups} == {"body.decay", "body.no_decay", "head.decay",
                                                           "head.no_decay"}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.01}
    assert all(g["momentum"] == 0.5 and g["nesterov"] for g in optimizer.param_groups)
    # lr / weight_decay only fill groups that lack them.
    optimizer = create_optimizer([{"params": [nn.Parameter(torch.ones(2))]},
                                  {"params": [nn.Parameter(torch.ones(2))], "lr": 0.5}], "AdamW", lr=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.5]


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("adamww", {}, r"unknown optimizer 'adamww'.*'adamw'"),
        ("Sgd", {}, r"'SGD', 'sgd'"),
        ("adamw", {"momentum": 0.9}, r"takes no argument 'momentum'.*betas"),
        ("SGD", {"betas": (0.9, 0.99)}, r"'betas'.*momentum"),
        ("adamw", {"betas": (2.0, 0.99)}, r"rejected its arguments.*beta"),
        ("Rprop", {}, r"no weight decay"),
    ],
)
def test_bad_names_and_kwargs_raise_config_error(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_optimizer(param_groups(_tiny_model(), lr=1e-3), name, **kwargs)


def test_model_without_lr_and_empty_groups():
    with pytest.raises(ConfigError, match="needs lr"):
        create_optimizer(_tiny_model(), "adamw")
    with pytest.raises(ConfigError, match="no parameters"):
        create_optimizer([], "adamw")


def test_register_optimizer():
    info = OptimizerInfo("test_sgd_half_momentum", torch.optim.SGD, "SGD, momentum 0.5", {"momentum": 0.5})
    register_optimizer(info)
    try:
        optimizer = create_optimizer(param_groups(_tiny_model(), lr=1e-3), "test_sgd_half_momentum")
        assert all(g["momentum"] == 0.5 for g in optimizer.param_groups)
        with pytest.raises(ConfigError, match="already registered"):
            register_optimizer(info)
        with pytest.raises(ConfigError, match="not a torch.optim.Optimizer"):
            register_optimizer(OptimizerInfo("test_not_an_optimizer", nn.Linear))  # type: ignore[arg-type]
    finally:
        from hubft.optim._optimizers import _REGISTRY

        _REGISTRY._records.pop("test_sgd_half_momentum")


@pytest.mark.parametrize("name", list_optimizers())
def test_fused_auto_picks_torch_fused_kernels_only(name):
    """auto fuses torch's Adam / AdamW (whatever the registry calls them) and leaves everything else alone, SGD
    included: its fused kernel cannot start momentum for part of a group."""
    options = fused_options(name, "auto", {})
    cls = get_optimizer_info(name).optimizer_class
    assert options == ({"fused": True} if issubclass(cls, torch.optim.Adam) else {})
    assert fused_options(name, False, {}) == {}


@pytest.mark.parametrize("name", ["adamw", "AdamW", "adam", "sgd", "SGD", "momentum"])
def test_fused_optimizer_matches_the_default_implementation(name):
    """The fused kernel is the same update: a step of each lands on the same weights (to float rounding; over
    several steps Adam's normalisation blows the rounding of near-zero gradients up, so one step is compared)."""
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        model = _tiny_model()
        optimizer = create_optimizer(param_groups(model, lr=1e-2, weight_decay=0.01), name,
                                     **fused_options(name, fused, {}))
        assert optimizer.param_groups[0].get("fused") is (True if fused else None)
        torch.manual_seed(1)
        _train_step(model, optimizer, False)
        results.append([p.detach().clone() for p in model.parameters()])
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


def test_a_subclass_that_does_not_take_fused_is_left_alone_and_torch_refusals_are_config_errors(monkeypatch):
    from hubft.optim import _optimizers

    monkeypatch.setattr(_optimizers, "_REGISTRY", _optimizers._REGISTRY.copy())  # the record must not leak

    class Plain(torch.optim.AdamW):
        def __init__(self, params, lr=1e-3):
            super().__init__(params, lr=lr)

    register_optimizer(OptimizerInfo("plain_adamw_test", Plain), overwrite=True)
    assert fused_options("plain_adamw_test", "auto", {}) == {}
    with pytest.raises(ConfigError, match="no fused implementation"):
        fused_options("plain_adamw_test", True, {})
    with pytest.raises(ConfigError, match="rejected its arguments"):  # torch: RuntimeError for fused + foreach
        create_optimizer(_tiny_model(), "adamw", lr=1e-3, **fused_options("adamw", True, {"foreach": True}))


def test_fused_options_respects_an_explicit_implementation_and_refuses_what_cannot_fuse():
    assert fused_options("adamw", "auto", {"foreach": False}) == {"foreach": False}
    assert fused_options("adamw", "auto", {"fused": False}) == {"fused": False}
    assert fused_options("adamw", True, {"betas": (0.9, 0.99)}) == {"betas": (0.9, 0.99), "fused": True}
    with pytest.raises(ConfigError, match="no fused implementation") as info:
        fused_options("lamb", True, {})
    assert "optim.fused" in info.value.fix
    with pytest.raises(ConfigError, match="optim.fused must be"):
        fused_options("adamw", "yes please", {})
