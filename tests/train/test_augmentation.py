"""Augmentation and regularisation from the config: every option trains, mixing is right, eval and resume hold.

The mixing statistics are checked on ``BatchMixing`` directly with many seeded draws: a batch of an all-zeros and
an all-ones image, labels 0 and 1, so that a mixed target row is ``[lam, 1 - lam]`` and the share of the partner's
pixels in the first image can be read off as its mean.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch

import hubft
from hubft.testing import reset_process_state
from hubft.errors import ConfigError
from hubft.faults import FaultInjected
from hubft.train.loop import TrainLoop
from hubft.train.mixing import BatchMixing, check_mixing_loss
from hubft.train.setup import create_run_model
from hubft.train.sampler import mix_seed

DRAWS = 2000
SOFT = {"name": "soft_target_cross_entropy"}
# Colour jitter is left out: timm turns it off under an auto-augment policy.
EVERYTHING = {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5, "hflip": 0.5, "scale": [0.5, 1.0],
              "ratio": [0.75, 1.33], "mixup_alpha": 0.8, "cutmix_alpha": 1.0}


@pytest.fixture(autouse=True)
def _one_thread():
    # 16 px batches gain nothing from a second intra-op thread, and on a shared 2-core machine it spins against
    # the other work: one thread makes these runs several times faster.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def learnable():
    """4 colour classes x 32 images of 16 px: 96 train images, 12 updates of 8."""
    from hubft.data import make_synthetic_image_dataset

    return make_synthetic_image_dataset(num_classes=4, per_class=32, size=16, seed=0)




def _set_up(cfg: dict, dataset) -> hubft.Finetuner:
    ft = hubft.Finetuner(cfg, dataset=dataset)
    ft.setup()
    return ft


def _train_transform(ft: hubft.Finetuner):
    return ft.parts.train_loader.dataset.dataset.transform  # SeededDataset -> ImageClassificationDataset -> transform


def _drop_probs(model: torch.nn.Module) -> list[float]:
    from timm.layers import DropPath

    return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]


# -- every option trains ------------------------------------------------------------------------------------------
OPTIONS = [
    pytest.param({"data": {"auto_augment": "rand-m9-mstd0.5-inc1"}},
                 lambda ft: "RandAugment" in repr(_train_transform(ft)), id="rand-augment"),
    pytest.param({"data": {"auto_augment": "augmix-m5-w4-d2"}},
                 lambda ft: "AugMixAugment" in repr(_train_transform(ft)), id="augmix"),
    pytest.param({"data": {"auto_augment": "original"}},
                 lambda ft: "AutoAugment" in repr(_train_transform(ft)), id="auto-augment-original"),
    pytest.param({"data": {"re_prob": 0.5, "re_mode": "rand"}},
                 lambda ft: "RandomErasing(p=0.5, mode=rand" in repr(_train_transform(ft)), id="random-erasing"),
    pytest.param({"data": {"color_jitter": 0.4}},
                 lambda ft: "ColorJitter" in repr(_train_transform(ft)), id="color-jitter"),
    pytest.param({"data": {"hflip": 0.5}},
                 lambda ft: "RandomHorizontalFlip(p=0.5)" in repr(_train_transform(ft)), id="hflip"),
    pytest.param({"data": {"scale": [0.5, 1.0], "ratio": [0.75, 1.33]}},
                 lambda ft: "scale=(0.5, 1.0), ratio=(0.75, 1.33)" in repr(_train_transform(ft)),
                 id="random-resized-crop"),
    pytest.param({"data": {"mixup_alpha": 0.8}, "loss": SOFT},
                 lambda ft: isinstance(ft.parts.mixing, BatchMixing), id="mixup"),
    pytest.param({"data": {"cutmix_alpha": 1.0}, "loss": SOFT},
                 lambda ft: isinstance(ft.parts.mixing, BatchMixing), id="cutmix"),
    pytest.param({"data": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "mixup_prob": 0.8},
                  "loss": {"name": "cross_entropy", "options": {"label_smoothing": 0.1}}},
                 lambda ft: ft.parts.mixing.label_smoothing == 0.1, id="mixup-cutmix-label-smoothing"),
    pytest.param({"model": {"name": "resnet10t", "pretrained": False, "drop_path_rate": 0.2, "drop_rate": 0.2}},
                 lambda ft: max(_drop_probs(ft.parts.model)) == pytest.approx(0.2), id="drop-path-dropout"),
]


@pytest.mark.parametrize(("sections", "is_on"), OPTIONS)
def test_each_option_trains(tmp_path, learnable, make_config, sections, is_on):
    # The train loss is against augmented, mixed targets and jumps between batches; the eval loss (never
    # augmented) on the same images before and after one epoch is the measure that must fall. At this LR it falls
    # to under half for every option over train seeds 0-5; the test asks for a fall of a third.
    data = {"image_size": 16, "eval_fraction": 0.25, "hflip": 0.0, **sections.get("data", {})}
    cfg = make_config(tmp_path / "run", **{**sections, "data": data}, optim={"lr": 0.003, "weight_decay": 0.0},
                      train={"epochs": 1})
    ft = _set_up(cfg, learnable)
    assert is_on(ft), "the option under test did not reach the run"
    before = ft.loop.evaluate(ft.parts.model)
    ft.loop.train_epoch(0)
    after = ft.loop.evaluate(ft.parts.model)
    ft.close()
    assert ft.loop.state.update == 12
    assert after["loss"] < 2 / 3 * before["loss"], (before["loss"], after["loss"])
    assert after["accuracy"] > 0.5  # 4 classes: chance is 0.25


# -- losses and mixing --------------------------------------------------------------------------------------------
def _hard_label_losses():
    from hubft.losses import accepts_soft_targets, create_loss, get_loss_info, list_losses

    # Regression (dense-target) losses are refused for class labels whatever the mixing; not counted here.
    registered = [n for n in list_losses() if get_loss_info(n).target in ("class", "binary")
                  and not accepts_soft_targets(create_loss(n))]
    return [pytest.param({"name": n}, None, id=n) for n in registered] + [
        pytest.param({}, torch.nn.NLLLoss(), id="torch-NLLLoss"),
        pytest.param({}, lambda out, y: torch.nn.functional.multi_margin_loss(out, y), id="user-function"),
    ]


@pytest.mark.parametrize(("loss_section", "loss"), _hard_label_losses())
def test_a_hard_label_loss_with_mixing_is_refused_before_training(tmp_path, tiny_dataset, make_config,
                                                                  loss_section, loss):
    cfg = make_config(tmp_path / "run", data={"image_size": 16, "eval_fraction": 0.25, "cutmix_alpha": 1.0},
                      loss=loss_section)
    with pytest.raises(ConfigError, match="soft") as info:
        hubft.finetune(cfg, dataset=tiny_dataset, loss=loss)
    message = str(info.value)
    assert "soft_target_cross_entropy" in message and "bce" in message and "cutmix_alpha" in message
    assert not (tmp_path / "run" / "log.jsonl").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def _soft_target_losses():
    from hubft.losses import accepts_soft_targets, create_loss, get_loss_info, list_losses

    return [n for n in list_losses() if get_loss_info(n).target in ("class", "binary")
            and accepts_soft_targets(create_loss(n))]


@pytest.mark.parametrize("loss", _soft_target_losses())
def test_every_soft_target_loss_trains_on_mixed_batches(tmp_path, tiny_dataset, make_config, loss):
    # label_smoothing moves into the mixing step, so a loss that has no such option is still accepted with it.
    cfg = make_config(tmp_path / "run", data={"image_size": 16, "eval_fraction": 0.25, "mixup_alpha": 0.8,
                                              "cutmix_alpha": 1.0},
                      loss={"name": loss, "options": {"label_smoothing": 0.1}},
                      train={"epochs": 1, "max_updates": 2})
    check_mixing_loss(hubft.load_config(None, {"loss.name": loss, "data.mixup_alpha": "0.8"}))
    ft = _set_up(cfg, tiny_dataset)
    assert ft.parts.mixing.label_smoothing == 0.1
    ft.loop.train_epoch(0)
    ft.close()
    steps = [r for r in ft.parts.output.read_log() if r["type"] == "step"]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps)


def test_check_mixing_loss_only_speaks_when_mixing_is_on():
    mse = hubft.load_config(None, {"loss.name": "mse"})
    check_mixing_loss(mse)  # mixing off: any loss is fine
    with pytest.raises(ConfigError, match="mixup_alpha"):
        check_mixing_loss(hubft.load_config(None, {"loss.name": "mse", "data.mixup_alpha": "0.2"}))
    check_mixing_loss(hubft.load_config(None, {"loss.name": "mse", "data.mixup_alpha": "0.2"}),
                      loss=torch.nn.CrossEntropyLoss())


# -- eval, regularisation, card -----------------------------------------------------------------------------------
def test_eval_batches_are_untouched_by_augmentation(tmp_path, tiny_dataset, make_config):
    on = make_config(tmp_path / "on", data={"image_size": 16, "eval_fraction": 0.25, **EVERYTHING, "re_prob": 1.0},
                     model={"name": "resnet10t", "pretrained": False, "drop_rate": 0.5, "drop_path_rate": 0.5},
                     loss=SOFT)
    off = make_config(tmp_path / "off", loss=SOFT)
    augmented, plain = _set_up(on, tiny_dataset), _set_up(off, tiny_dataset)

    def first_train_batch(ft):
        ft.parts.train_loader.set_epoch(0)
        return next(iter(ft.parts.train_loader))[0]

    assert not torch.equal(first_train_batch(augmented), first_train_batch(plain)), "augmentation is not on"
    for (xa, ya), (xp, yp) in zip(augmented.parts.eval_loader, plain.parts.eval_loader, strict=True):
        assert torch.equal(xa, xp) and torch.equal(ya, yp)

    calls = []
    mixing = augmented.parts.mixing
    watched = TrainLoop(dataclasses.replace(
        augmented.parts, mixing=lambda *args, **kwargs: calls.append(1) or mixing(*args, **kwargs)))
    same_weights = zip(augmented.parts.model.state_dict().values(), plain.parts.model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in same_weights)
    assert watched.evaluate(augmented.parts.model) == plain.loop.evaluate(plain.parts.model)
    assert calls == []


def test_drop_rates_reach_the_backbone(tmp_path, tiny_dataset, make_config):
    def built(model_section):
        ft = hubft.Finetuner(make_config(tmp_path / "run", model={"name": "resnet10t", "pretrained": False,
                                                                  **model_section}), dataset=tiny_dataset)
        ft.setup_data()
        return create_run_model(ft.config, ft.data, ft.task)[0]

    model = built({"drop_rate": 0.3, "drop_path_rate": 0.2})
    probs = _drop_probs(model)
    assert probs and max(probs) == pytest.approx(0.2) and all(0 < p < 0.2 + 1e-9 for p in probs)
    assert model.drop_rate == 0.3
    plain = built({})
    assert not any(p > 0 for p in _drop_probs(plain)) and plain.drop_rate == 0


def test_the_model_card_records_augmentation_and_regularisation(tmp_path, tiny_dataset, make_config):
    from hubft.hub.card import render_model_card

    cfg = make_config(tmp_path / "run", data={"image_size": 16, "eval_fraction": 0.25, **EVERYTHING,
                                              "re_prob": 0.25, "mixup_off_epoch": 3},
                      model={"name": "resnet10t", "pretrained": False, "drop_rate": 0.1, "drop_path_rate": 0.05},
                      loss=SOFT, train={"epochs": 1, "max_updates": 1})
    hubft.finetune(cfg, dataset=tiny_dataset)
    card = render_model_card(tmp_path / "run")
    for fact in ("auto_augment=rand-m9-mstd0.5-inc1", "re_prob=0.25", "re_mode=pixel", "scale=[0.5, 1.0]",
                 "mixup_alpha=0.8", "cutmix_alpha=1", "mixup_switch_prob=0.5", "mixup_off_epoch=3",
                 "drop_rate=0.1", "drop_path_rate=0.05"):
        assert fact in card, fact
    facts = json.loads((tmp_path / "run" / "metrics.json").read_text())["run"]
    assert facts["augmentation"]["mixup_alpha"] == 0.8 and facts["regularisation"]["drop_path_rate"] == 0.05


# -- exact resume ---------------------------------------------------------------------------------------------------
def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_resume_with_augmentation_and_mixing_is_bit_identical(tmp_path, tiny_dataset, make_config, monkeypatch):
    # 36 train images in batches of 11: three odd batches and a short odd one (3) per epoch, 4 updates; die at
    # update 3, mid-epoch and after the checkpoint of update 2.
    sections = dict(
        data={"image_size": 16, "eval_fraction": 0.25, **EVERYTHING},
        model={"name": "resnet10t", "pretrained": False, "drop_rate": 0.2, "drop_path_rate": 0.1},
        loss=SOFT,
        train={"batch_size": 11, "checkpoint_every": 2, "keep_checkpoints": 2},
    )
    straight = make_config(tmp_path / "straight", **sections)
    hubft.finetune(straight, dataset=tiny_dataset)
    reset_process_state()

    interrupted = make_config(tmp_path / "resumed", **sections)
    monkeypatch.setenv("HUBFT_FAULT", "after_optimizer_step@3:raise")
    with pytest.raises(FaultInjected):
        hubft.finetune(interrupted, dataset=tiny_dataset)
    monkeypatch.delenv("HUBFT_FAULT")
    reset_process_state()
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["step-00000002"]
    interrupted["train"]["resume"] = "latest"
    hubft.finetune(interrupted, dataset=tiny_dataset)

    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")

    def steps(run):
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())
                if r["type"] == "step"]

    assert steps(a) == steps(b) and len(steps(a)) == 8
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["history"] == mb["history"]


# -- the mixing step itself -----------------------------------------------------------------------------------------
def _pair(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([torch.zeros(3, size, size), torch.ones(3, size, size)]), torch.tensor([0, 1])


def _draw(mix: BatchMixing, n: int = DRAWS) -> tuple[np.ndarray, list[str]]:
    """``lam`` and the method (none / mixup / cutmix) of ``n`` seeded mixes of :func:`_pair`."""
    x, y = _pair()
    lams, kinds = [], []
    for i in range(n):
        mixed, target = mix(x, y, mix_seed(1234, i))
        lam = float(target[0, 0])
        first = mixed[0]
        # The target weight is the share of the image that is the sample's own, for mixup and cutmix alike.
        assert float(first.mean()) == pytest.approx(1 - lam, abs=1e-6)
        assert torch.allclose(target.sum(1), torch.ones(2))
        lams.append(lam)
        # Read off the image, not the float32 target, where a lam within 6e-8 of 1 rounds to 1: mixup blends
        # every pixel alike, cutmix pastes a box smaller than the image (its side is floored).
        if not first.any():
            kinds.append("none")
        else:
            kinds.append("mixup" if bool((first == first.flatten()[0]).all()) else "cutmix")
    return np.asarray(lams), kinds


def _se_of_variance(values: np.ndarray) -> float:
    centred = values - values.mean()
    return math.sqrt(max((centred ** 4).mean() - centred.var() ** 2, 0.0) / len(values))


@pytest.mark.parametrize("alpha", [0.4, 1.0, 2.0])
def test_mixup_weight_follows_beta_alpha_alpha(alpha):
    # Cutmix on with a very different alpha but never chosen: the draws must come from mixup_alpha.
    lam, kinds = _draw(BatchMixing(mixup_alpha=alpha, cutmix_alpha=8.0, switch_prob=0.0, num_classes=2))
    assert set(kinds) == {"mixup"}
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); five standard errors of the sample statistics.
    assert abs(lam.mean() - 0.5) < 5 * lam.std() / math.sqrt(DRAWS)
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 5 * _se_of_variance(lam)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_cutmix_weight_is_the_area_kept_and_follows_alpha(alpha):
    from timm.data.mixup import cutmix_bbox_and_lam

    lam, kinds = _draw(BatchMixing(mixup_alpha=8.0, cutmix_alpha=alpha, switch_prob=1.0, num_classes=2))
    # A lam close enough to 1 gives a box of side 0 (nothing pasted, lam corrected to 1): "none".
    assert set(kinds) <= {"cutmix", "none"} and kinds.count("cutmix") > 0.9 * DRAWS
    # Reference: timm's own box for Beta(a, a) draws from an independent generator. The area correction only
    # ever removes pasted pixels (box sides are floored, then clipped at the border), so the mean is above 1/2.
    raw = np.random.default_rng(99).beta(alpha, alpha, DRAWS)
    state = np.random.get_state()
    np.random.seed(99)
    reference = np.asarray([cutmix_bbox_and_lam((16, 16), r)[1] for r in raw])
    np.random.set_state(state)
    tolerance = 5 * math.sqrt((lam.var() + reference.var()) / DRAWS)
    assert abs(lam.mean() - reference.mean()) < tolerance
    assert lam.mean() > 0.5 + tolerance
    # The mean of a symmetric Beta is 1/2 whatever alpha; the spread is what alpha sets.
    assert abs(lam.var() - reference.var()) < 5 * math.hypot(_se_of_variance(lam), _se_of_variance(reference))


def test_mix_probability_and_switch_probability():
    lam, kinds = _draw(BatchMixing(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3, num_classes=2))

    def close(fraction, p, n):
        return abs(fraction - p) < 5 * math.sqrt(p * (1 - p) / n)

    mixed = DRAWS - kinds.count("none")
    assert close(kinds.count("none") / DRAWS, 0.4, DRAWS)
    assert close(kinds.count("cutmix") / mixed, 0.3, mixed)


def test_targets_are_smoothed_distributions():
    mix = BatchMixing(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    for seed in range(20):
        _, target = mix(x, y, seed)
        assert target.shape == (8, 4)
        assert torch.allclose(target.sum(1), torch.ones(8))
        assert float(target.min()) >= 0.1 / 4 - 1e-6


@pytest.mark.parametrize("batch", [1, 3, 5, 7])
def test_odd_and_short_batches_mix_all_but_the_last(batch):
    mix = BatchMixing(mixup_alpha=1.0, label_smoothing=0.1, num_classes=8)
    x, y = torch.randn(batch, 3, 16, 16), torch.arange(batch)
    mixed, target = mix(x, y, seed=5)
    assert mixed.shape == x.shape and target.shape == (batch, 8)
    assert torch.allclose(target.sum(1), torch.ones(batch))
    # The last sample keeps its image and its own smoothed one-hot target.
    assert torch.equal(mixed[-1], x[-1])
    assert float(target[-1, batch - 1]) == pytest.approx(1 - 0.1 + 0.1 / 8)
    if batch > 1:
        # The even part is mixed in pairs (i, n - 2 - i) with one lam, exactly as an even batch of n - 1 would be.
        even_x, even_target = mix(x[:-1], y[:-1], seed=5)
        assert torch.equal(mixed[:-1], even_x) and torch.equal(target[:-1], even_target)
        assert not torch.equal(mixed[0], x[0])


def test_draws_depend_on_the_seed_only():
    mix = BatchMixing(mixup_alpha=1.0, cutmix_alpha=1.0, num_classes=4)
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    x_before, numpy_state = x.clone(), np.random.get_state()
    first, again = mix(x, y, seed=11), mix(x, y, seed=11)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(x, x_before), "the input batch must not be modified"
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state)), "numpy RNG restored"
    assert any(not torch.equal(first[1], mix(x, y, seed=s)[1]) for s in range(12, 16))
    # A shard of another size (another process, the last batch) mixed with the same seed gets the same lam.
    shard, labels = torch.zeros(4, 3, 16, 16), torch.tensor([0, 0, 1, 1])
    shard[2:] = 1
    assert float(mix(shard, labels, seed=11)[1][0, 0]) == pytest.approx(float(mix(*_pair(), seed=11)[1][0, 0]))


def test_after_the_off_epoch_images_are_kept_and_targets_stay_soft():
    mix = BatchMixing(mixup_alpha=1.0, label_smoothing=0.2, num_classes=4, off_epoch=2)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    assert not torch.equal(mix(x, y, seed=3, epoch=1)[0], x)
    kept, target = mix(x, y, seed=3, epoch=2)
    assert torch.equal(kept, x)
    expected = torch.full((4, 4), 0.05)
    expected[torch.arange(4), y] = 0.85
    assert torch.allclose(target, expected)


def test_multi_label_targets_mix_per_label():
    mix = BatchMixing(mixup_alpha=1.0, num_classes=3, multi_label=True)
    x = torch.stack([torch.zeros(3, 16, 16), torch.ones(3, 16, 16)])
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    mixed, target = mix(x, y, seed=4)
    lam = 1 - float(mixed[0].mean())
    assert torch.allclose(target[0], torch.tensor([lam, 1.0, 1 - lam]), atol=1e-6)


@pytest.mark.parametrize(("options", "needle"), [
    ({}, "mixup_alpha > 0 or data.cutmix_alpha > 0"),
    ({"mixup_alpha": -0.1}, "data.mixup_alpha"),
    ({"cutmix_alpha": 1.0, "prob": 1.5}, "data.mixup_prob"),
    ({"cutmix_alpha": 1.0, "switch_prob": -1}, "data.mixup_switch_prob"),
    ({"cutmix_alpha": 1.0, "label_smoothing": 1.0}, "label_smoothing"),
    ({"cutmix_alpha": 1.0, "num_classes": 0}, "num_classes"),
])
def test_bad_mixing_options_are_refused(options, needle):
    with pytest.raises(ConfigError, match="Fix:") as info:
        BatchMixing(**{"num_classes": 4, **options})
    assert needle in str(info.value)
