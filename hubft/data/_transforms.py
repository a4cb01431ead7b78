"""Train and eval transforms derived from a model's own preprocessing (timm's ``pretrained_cfg``).

The pipelines are timm's (``resolve_data_config`` + ``create_transform``); hubft adds the conversion of any PIL
mode to RGB in front, and the two stages :class:`~hubft.data.ImageClassificationDataset` uses for its in-memory
cache: ``cache_prepare`` (run once per image) and ``cache_finish`` (run per epoch on the cached uint8 tensor).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data import create_transform, resolve_data_config
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision.transforms import InterpolationMode, Normalize

from hubft.errors import ConfigError

__all__ = ["ImageTransform", "create_transforms", "to_rgb"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming", "random")
RE_MODES = ("const", "rand", "pixel")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit RGB.

    Grayscale and bilevel images are replicated to three channels; palette images go through RGBA so that a
    transparency entry is honoured; alpha is dropped (not composited); 16-bit images (``I;16*``, and ``I`` with
    values above 255) are scaled from 0..65535 to 0..255 rather than clipped.

    Examples:
        >>> to_rgb(Image.new("I;16", (2, 2), 65535)).getpixel((0, 0))
        (255, 255, 255)
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT or image.mode == "I":
        pixels = np.asarray(image).astype(np.int64)
        if image.mode in _SIXTEEN_BIT or pixels.max(initial=0) > 255:
            pixels = (np.clip(pixels, 0, 65535) * 255 + 32767) // 65535
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


class ImageTransform:
    """A timm transform that accepts any PIL image mode, with the stages of its cached variant.

    Build it with :func:`create_transforms`. Calling it on a PIL image returns a normalised float tensor
    ``(3, H, W)``.

    Attributes:
        transform: timm's composed transform (PIL RGB in, tensor out).
        data_config: The resolved preprocessing: ``input_size``, ``interpolation``, ``mean``, ``std``,
            ``crop_pct``, ``crop_mode``.
        training: Whether this is the augmenting train transform.
    """

    def __init__(self, timm_kwargs: dict[str, Any], data_config: dict[str, Any], training: bool) -> None:
        self.data_config = data_config
        self.training = training
        self.transform = _posterize_to_black(create_transform(**timm_kwargs))
        if training:
            # separate=True splits timm's train pipeline into geometry / colour / tensor stages, which lets the
            # cached path run the first two on uint8 tensors instead of decoded PIL images
            self._primary, self._secondary, self._final = create_transform(**timm_kwargs, separate=True)
            self._primary.transforms = [_Uint8ResizedCrop(step) if isinstance(step, RandomResizedCropAndInterpolation)
                                        else step for step in self._primary.transforms]
            _posterize_to_black(self._secondary)
            self._secondary_needs_pil = bool(timm_kwargs.get("auto_augment"))
            tail = self._final.transforms
        else:
            steps = list(self.transform.transforms)
            split = next(i for i, step in enumerate(steps) if isinstance(step, MaybeToTensor))
            self._geometry = type(self.transform)(steps[:split])
            self._tail = type(self.transform)(steps[split + 1:])
            tail = self._tail.transforms
        # After the uint8 stages only the float conversion and Normalize: the batch can be normalised instead.
        self.defers_normalize = all(isinstance(step, (MaybeToTensor, Normalize)) for step in tail)
        self._normalize_constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(to_rgb(image))

    def __repr__(self) -> str:
        return f"ImageTransform(training={self.training}, data_config={self.data_config}, transform={self.transform})"

    @property
    def cache_size(self) -> tuple[int, int]:
        """``(height, width)`` of a cached image: the eval crop for eval, the eval resize size for train."""
        height, width = self.data_config["input_size"][-2:]
        if not self.training:
            return height, width
        crop_pct = self.data_config["crop_pct"]
        return math.floor(height / crop_pct), math.floor(width / crop_pct)

    def cache_prepare(self, image: Image.Image) -> torch.Tensor:
        """The once-per-image part, returning a uint8 ``(3, h, w)`` tensor.

        Eval: the deterministic resize and crop, so that :meth:`cache_finish` gives exactly what calling the
        transform gives. Train: a shrink (never an enlargement) keeping the aspect ratio, so that the shorter side
        is at most the eval resize size; the random crop then works on that smaller image, which is the one way
        the cached train path differs from the uncached one.
        """
        image = to_rgb(image)
        if not self.training:
            image = self._geometry(image)
        else:
            target = max(self.cache_size)
            shorter = min(image.size)
            if shorter > target:
                size = tuple(max(1, round(side * target / shorter)) for side in image.size)
                image = image.resize(size, resample=str_to_pil_interp(self.data_config["interpolation"]))
        return TF.pil_to_tensor(image).contiguous()

    def cache_finish(self, pixels: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """The per-epoch part, from a :meth:`cache_prepare` tensor to the normalised float tensor.

        With ``normalize=False`` (only when :attr:`defers_normalize`) the uint8 image before the float conversion
        is returned; :meth:`normalize` then gives exactly what ``normalize=True`` would have.
        """
        if not self.training:
            if not normalize:
                return pixels
            # the same float conversion ToTensor applies to a PIL image, so the result is bit-identical
            return self._tail(pixels.to(torch.float32).div(255))
        pixels = self._primary(pixels)
        if self._secondary_needs_pil:
            pixels = TF.pil_to_tensor(self._secondary(TF.to_pil_image(pixels)))
        else:
            pixels = self._secondary(pixels)
        if not normalize:
            return pixels.contiguous()
        return self._final(pixels.to(torch.float32).div(255)).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(3, H, W)`` or a batch ``(B, 3, H, W)``, on any device, to normalised float32.

        The same operations as the per-image float conversion and Normalize of :meth:`cache_finish`, so the result
        is bit-identical; on a batch on the device they cost one pass over it instead of a copy per image on the
        host, and the batch crosses the bus as uint8 (a quarter of the bytes).
        """
        constants = self._normalize_constants.get(pixels.device)
        if constants is None:
            mean, std = (torch.as_tensor(self.data_config[key], dtype=torch.float32, device=pixels.device)
                         .view(-1, 1, 1) for key in ("mean", "std"))
            # 255 as a tensor on the device: CUDA divides by a Python number as a multiplication by its reciprocal,
            # one bit off the true division the CPU path does; by a device tensor it divides.
            scale = torch.full((), 255.0, dtype=torch.float32, device=pixels.device)
            constants = self._normalize_constants[pixels.device] = (scale, mean, std)
        scale, mean, std = constants
        return pixels.to(torch.float32).div_(scale).sub_(mean).div_(std)


class _Uint8ResizedCrop:
    """timm's random resized crop for the cached uint8 tensors, resampled by torch's uint8 kernels.

    The crop box and the interpolation are drawn by timm's own transform, in its order and from the same RNGs.
    For bilinear and bicubic the crop is resized by ``torch.nn.functional.interpolate`` on the uint8 tensor itself
    (antialiased, like torchvision's resize): torchvision's tensor resize converts uint8 to float for bicubic and
    back, 2.5-4x slower per image (24 vs 68 us at 64 px, 131 vs 566 us at 224 px on a 2-core CPU). The uint8 kernel
    rounds between its two passes, so pixels may differ from the float path by a few levels (mean 0.3 of 255).
    Other interpolations go through torchvision as before.
    """

    _MODES = {InterpolationMode.BILINEAR: "bilinear", InterpolationMode.BICUBIC: "bicubic"}

    def __init__(self, crop: RandomResizedCropAndInterpolation) -> None:
        self.crop = crop

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        top, left, height, width = crop.get_params(pixels, crop.scale, crop.ratio)
        interpolation = random.choice(crop.interpolation) if isinstance(crop.interpolation, (tuple, list)) \
            else crop.interpolation
        mode = self._MODES.get(interpolation)
        if mode is None or pixels.dtype != torch.uint8:
            return TF.resized_crop(pixels, top, left, height, width, crop.size, interpolation)
        box = pixels[:, top:top + height, left:left + width].contiguous()
        return torch.nn.functional.interpolate(box.unsqueeze(0), size=tuple(crop.size), mode=mode,
                                               antialias=True, align_corners=False)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop!r})"


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    if bits_to_keep <= 0:
        # Keeping 0 bits is a black image (the TF reference's behaviour). Pillow 13 refuses bits=0, which timm's
        # policies ask for at an extreme magnitude (PosterizeIncreasing at m10, reached by rand-m9-mstd0.5-inc1;
        # Posterize at m0 in the v0 policy): without this a run would crash at a random image.
        return Image.new(img.mode, img.size)
    return timm_auto_augment.posterize(img, bits_to_keep, **kwargs)


def _posterize_to_black(transform: Any) -> Any:
    """Route the posterize ops of timm's auto-augment policies inside ``transform`` through :func:`_posterize`."""
    stack = [transform]
    while stack:
        item = stack.pop()
        if isinstance(item, timm_auto_augment.AugmentOp):
            if item.aug_fn is timm_auto_augment.posterize:
                item.aug_fn = _posterize
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            # Compose keeps `transforms`; RandAugment and AugMix keep `ops`; AutoAugment keeps `policy`.
            for name in ("transforms", "ops", "policy"):
                stack.extend(getattr(item, name, None) or ())
    return transform


def _pretrained_cfg(source: Mapping[str, Any] | torch.nn.Module) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    cfg = getattr(source, "pretrained_cfg", None)
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ConfigError(
        f"expected a model's pretrained_cfg (a mapping) or a model carrying one, got {type(source).__name__}",
        fix="pass model.pretrained_cfg, or the timm model itself",
    )


def _pair(value: Any, key: str, *, upper: float | None = None) -> tuple[float, float] | None:
    if value is None:
        return None
    fix = f"pass e.g. {key}=(0.5, 1.0)"
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be a (min, max) pair of numbers, got {value!r}", fix=fix) from None
    if not 0 < low <= high or (upper is not None and high > upper):
        bound = f" <= {upper}" if upper is not None else ""
        raise ConfigError(f"{key} must satisfy 0 < min <= max{bound}, got {value!r}", fix=fix)
    return low, high


def _probability(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{key} must be a probability in [0, 1], got {value!r}", fix=f"pass e.g. {key}=0.5")
    return float(value)


def _image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int, int] | None:
    if image_size is None:
        return None
    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(sizes) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
        raise ConfigError(f"image_size must be a positive int or (height, width), got {image_size!r}",
                          fix="pass e.g. image_size=224")
    return (3, *sizes)


def create_transforms(
    pretrained_cfg: Mapping[str, Any] | torch.nn.Module,
    *,
    image_size: int | tuple[int, int] | None = None,
    training: bool,
    auto_augment: str | None = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    color_jitter: float | tuple[float, ...] | None = None,
    hflip: float = 0.5,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] | None = None,
    interpolation: str | None = None,
) -> ImageTransform:
    """The train or eval transform matching a model's preprocessing.

    Input size, interpolation, mean, std and crop are resolved by timm's ``resolve_data_config`` from
    ``pretrained_cfg`` (a timm ``pretrained_cfg`` dict, or a model carrying one); ``image_size`` overrides the
    input size and ``interpolation`` the interpolation. The pipeline is timm's ``create_transform``: for
    ``training=True`` a random resized crop (``scale``, ``ratio``), horizontal flip (``hflip``), optional
    ``color_jitter`` or ``auto_augment`` (a timm policy string such as ``"rand-m9-mstd0.5"``; timm turns colour
    jitter off when it is set) and random erasing (``re_prob``, ``re_mode``); for ``training=False`` resize, centre
    crop and normalise, and the augmentation options are ignored. ``interpolation="random"`` picks bilinear or
    bicubic per image when training; eval then keeps the model's interpolation.

    Returns:
        An :class:`ImageTransform`: callable on a PIL image of any mode, returning a float tensor ``(3, H, W)``.

    Raises:
        ConfigError: an option is out of range or unknown, the model expects other than 3 input channels, or timm
            rejects ``auto_augment``.

    Examples:
        >>> cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}
        >>> tf = create_transforms(cfg, training=False)
        >>> tf(Image.new("L", (40, 50))).shape
        torch.Size([3, 32, 32])
    """
    cfg = _pretrained_cfg(pretrained_cfg)
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}", fix=f"use one of: {', '.join(INTERPOLATIONS)}")
    args: dict[str, Any] = {}
    input_size = _image_size(image_size)
    if input_size is not None:
        args["input_size"] = input_size
    if interpolation is not None and (training or interpolation != "random"):
        args["interpolation"] = interpolation
    data_config = resolve_data_config(args=args, pretrained_cfg=cfg)
    if data_config["input_size"][0] != 3:
        raise ConfigError(f"the model expects {data_config['input_size'][0]} input channels; hubft feeds RGB images",
                          fix="use a model with in_chans=3")
    kwargs = dict(data_config, is_training=training)
    if training:
        if re_mode not in RE_MODES:
            raise ConfigError(f"unknown re_mode {re_mode!r}", fix=f"use one of: {', '.join(RE_MODES)}")
        if auto_augment is not None and not isinstance(auto_augment, str):
            raise ConfigError(f"auto_augment must be a timm policy string, got {auto_augment!r}",
                              fix="pass e.g. auto_augment='rand-m9-mstd0.5'")
        kwargs.update(
            auto_augment=auto_augment or None,
            re_prob=_probability(re_prob, "re_prob"),
            re_mode=re_mode,
            color_jitter=color_jitter,
            hflip=_probability(hflip, "hflip"),
            scale=_pair(scale, "scale", upper=1.0),
            ratio=_pair(ratio, "ratio"),
        )
    try:
        return ImageTransform(kwargs, data_config, training)
    except (AssertionError, KeyError, ValueError, TypeError) as error:
        # timm validates policy strings and jitter tuples with assert / KeyError deep inside its factories
        raise ConfigError(f"timm rejected the augmentation options ({type(error).__name__}: {error})",
                          fix="check auto_augment (e.g. 'rand-m9-mstd0.5') and color_jitter (a float or 3-4 floats)"
                          ) from error
