"""create_transforms follows the model's preprocessing; augmentation only ever touches the train transform."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageFilter

from hubft.data import ImageTransform, create_transforms, to_rgb
from hubft.errors import ConfigError


def _photo(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_eval_transform_follows_pretrained_cfg(tiny_cfg):
    tf = create_transforms(tiny_cfg, training=False)
    assert isinstance(tf, ImageTransform) and not tf.training
    assert tf.data_config["input_size"] == (3, 24, 24) and tf.data_config["mean"] == (0.25, 0.5, 0.75)
    image = Image.new("RGB", (40, 30), (64, 128, 191))
    out = tf(image)
    assert out.shape == (3, 24, 24)
    expected = (torch.tensor([64, 128, 191]) / 255 - torch.tensor([0.25, 0.5, 0.75])) / torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(out[:, 12, 12], expected)
    assert "Resize(size=32" in repr(tf)  # crop_pct 0.75: resize to 24 / 0.75, then crop 24


@pytest.mark.parametrize(("image_size", "shape"), [(20, (3, 20, 20)), ((16, 28), (3, 16, 28))])
@pytest.mark.parametrize("training", [False, True])
def test_image_size_overrides_input_size(tiny_cfg, image_size, shape, training):
    tf = create_transforms(tiny_cfg, image_size=image_size, training=training)
    assert tf.data_config["input_size"] == shape and tf(_photo()).shape == shape
    assert tf.data_config["std"] == (0.1, 0.2, 0.3)


def test_model_or_its_cfg_give_the_same_transform():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=2)
    from_model = create_transforms(model, training=False)
    from_cfg = create_transforms(model.pretrained_cfg, image_size=64, training=False)
    assert from_model.data_config["mean"] == model.pretrained_cfg["mean"]
    assert from_model.data_config["input_size"] == model.pretrained_cfg["input_size"]
    assert from_cfg.data_config["interpolation"] == model.pretrained_cfg["interpolation"]


def test_eval_is_deterministic_and_ignores_augmentation(tiny_cfg):
    plain = create_transforms(tiny_cfg, training=False)
    loaded = create_transforms(tiny_cfg, training=False, auto_augment="rand-m9-mstd0.5", re_prob=1.0,
                               color_jitter=0.4, hflip=1.0, scale=(0.1, 0.2))
    image = _photo()
    torch.manual_seed(1)
    first = plain(image)
    torch.manual_seed(2)
    assert torch.equal(first, plain(image)) and torch.equal(first, loaded(image))
    assert repr(plain.transform) == repr(loaded.transform)


@pytest.mark.parametrize(
    "options",
    [dict(hflip=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0)), dict(color_jitter=0.8), dict(re_prob=1.0),
     dict(auto_augment="rand-m9-mstd0.5")],
    ids=["hflip", "color-jitter", "random-erasing", "rand-augment"],
)
def test_train_augmentation_changes_pixels(tiny_cfg, options):
    square = {**tiny_cfg, "crop_pct": 1.0}
    eval_tf = create_transforms(square, training=False, **options)
    base = dict(hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    plain = create_transforms(square, training=True, **base)
    augmented = create_transforms(square, training=True, **{**base, **options})
    image = _photo((24, 24))
    reference = eval_tf(image)
    assert torch.equal(plain(image), reference)  # a full-image crop of a 24 px image is the eval view
    _seed_all(0)
    assert any(not torch.equal(augmented(image), reference) for _ in range(5))
    assert all(torch.equal(eval_tf(image), reference) for _ in range(5))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize(
    ("mode", "make"),
    [
        ("L", lambda: Image.new("L", (8, 8), 200)),
        ("LA", lambda: Image.new("LA", (8, 8), (200, 10))),
        ("RGBA", lambda: Image.new("RGBA", (8, 8), (200, 200, 200, 0))),
        ("P", lambda: Image.new("RGB", (8, 8), (200, 200, 200)).convert("P", palette=Image.Palette.ADAPTIVE)),
        ("1", lambda: Image.new("1", (8, 8), 1)),
        ("CMYK", lambda: Image.new("CMYK", (8, 8), (0, 0, 0, 55))),
        ("I;16", lambda: Image.new("I;16", (8, 8), 200 * 257)),
        ("I", lambda: Image.new("I", (8, 8), 200 * 257)),
    ],
)
def test_any_mode_becomes_rgb(mode, make, tiny_cfg):
    image = make()
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (8, 8)
    expected = 255 if mode == "1" else 200
    assert all(abs(value - expected) <= 1 for value in rgb.getpixel((3, 3)))
    assert create_transforms(tiny_cfg, training=True)(image).shape == (3, 24, 24)


def test_palette_transparency_does_not_warn():
    image = Image.new("P", (4, 4), 0)
    image.info["transparency"] = b"\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert to_rgb(image).mode == "RGB"


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (dict(image_size=0), "image_size"),
        (dict(image_size=(3, 32, 32)), "image_size"),
        (dict(interpolation="cubic"), "unknown interpolation 'cubic'"),
        (dict(re_mode="noise"), "unknown re_mode 'noise'"),
        (dict(re_prob=1.5), "re_prob"),
        (dict(hflip=-0.1), "hflip"),
        (dict(scale=(0.9, 0.1)), "scale"),
        (dict(scale=(0.5, 2.0)), "scale"),
        (dict(ratio="wide"), "ratio"),
        (dict(auto_augment="nonsense-policy"), "timm rejected"),
        (dict(color_jitter=(0.1, 0.2)), "timm rejected"),
    ],
)
def test_bad_options_raise_config_error(tiny_cfg, options, words):
    with pytest.raises(ConfigError, match="Fix:") as info:
        create_transforms(tiny_cfg, training=True, **options)
    assert words in str(info.value)


def test_non_rgb_models_and_non_configs_are_rejected(tiny_cfg):
    with pytest.raises(ConfigError, match="1 input channels"):
        create_transforms({**tiny_cfg, "input_size": (1, 24, 24), "mean": (0.5,), "std": (0.5,)}, training=False)
    with pytest.raises(ConfigError, match="pretrained_cfg"):
        create_transforms("resnet18", training=False)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random", "nearest"])
def test_cached_train_crop_draws_timms_box_and_resamples_uint8(tiny_cfg, interpolation):
    """The cached path's crop: the box and interpolation timm's transform would draw from the same RNG state, the
    same image as torchvision's float resize to within rounding, uint8 all the way."""
    import torchvision.transforms.functional as TF
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from hubft.data._transforms import _Uint8ResizedCrop

    tf = create_transforms(tiny_cfg, training=True, interpolation=interpolation, scale=(0.3, 1.0))
    ours = tf._primary.transforms[0]
    assert isinstance(ours, _Uint8ResizedCrop) and isinstance(ours.crop, RandomResizedCropAndInterpolation)
    # A smooth photo-like image: on noise, bicubic's overshoot makes the two roundings differ more.
    pixels = TF.pil_to_tensor(_photo((48, 40)).filter(ImageFilter.GaussianBlur(2)))
    for seed in range(8):
        _seed_all(seed)
        got = ours(pixels)
        _seed_all(seed)
        want = ours.crop(pixels)  # timm's own transform on the tensor: torchvision's resize
        assert got.dtype == torch.uint8 and got.shape == want.shape == (3, 24, 24)
        difference = (got.int() - want.int()).abs()
        assert difference.float().mean() < 0.5 and difference.max() <= 2, (seed, difference.max())
        state = (torch.random.get_rng_state(), random.getstate())
        _seed_all(seed)
        ours.crop(pixels)
        assert torch.equal(state[0], torch.random.get_rng_state()) and state[1] == random.getstate()
