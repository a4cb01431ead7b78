"""ImageClassificationDataset: items, targets, the decoded-once cache, RNG determinism and DataLoader workers."""

from __future__ import annotations

import io
import pickle
import random

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import hubft.data._dataset as dataset_module
from hubft.data import ImageClassificationDataset, create_transforms, load_data, make_synthetic_image_dataset
from hubft.errors import ConfigError, DataError

AUGMENT = dict(auto_augment="rand-m9-mstd0.5", re_prob=0.5, color_jitter=0.4)


def _odd_sizes() -> datasets.Dataset:
    """Non-square images of assorted sizes and modes, some larger and some smaller than the model input."""
    rng = np.random.default_rng(0)
    images = []
    for width, height, mode in [(40, 30, "RGB"), (25, 50, "L"), (64, 64, "RGBA"), (12, 20, "P"), (90, 33, "RGB")]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels).convert(mode))
    return datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 0]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(names=["a", "b"])}))


def _items(ds, indices=None) -> list[torch.Tensor]:
    return [ds[i][0] for i in (indices if indices is not None else range(len(ds)))]


def test_items_and_int64_targets(synthetic, tiny_cfg):
    bundle = load_data(dataset=synthetic)
    ds = ImageClassificationDataset.from_bundle(bundle, "eval", create_transforms(tiny_cfg, training=False))
    assert len(ds) == 6 and ds.labels == list(bundle.eval["label"])
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 24) and isinstance(target, int)
    images, targets = next(iter(DataLoader(ds, batch_size=6)))
    assert images.shape == (6, 3, 24, 24) and targets.dtype == torch.int64 and targets.tolist() == ds.labels


def test_multi_hot_targets(tiny_cfg):
    bundle = load_data(dataset=make_synthetic_image_dataset(num_classes=4, per_class=5, multi_label=True))
    ds = ImageClassificationDataset.from_bundle(bundle, "train", create_transforms(tiny_cfg, training=True))
    for index in range(len(ds)):
        _, target = ds[index]
        assert target.dtype == torch.float32 and target.shape == (4,)
        assert torch.nonzero(target).flatten().tolist() == sorted(bundle.train[index]["label"])
    _, targets = next(iter(DataLoader(ds, batch_size=4)))
    assert targets.shape == (4, 4) and set(targets.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("source", ["odd-sizes", "mixed-mode-folder"])
def test_cached_eval_items_equal_uncached(source, image_folder, tiny_cfg):
    hf = _odd_sizes() if source == "odd-sizes" else load_data(path=image_folder).train
    for cfg in (tiny_cfg, {**tiny_cfg, "interpolation": "bicubic", "crop_pct": 0.95}):
        tf = create_transforms(cfg, training=False)
        cached = ImageClassificationDataset(hf, tf, "image", "label", cache=True)
        plain = ImageClassificationDataset(hf, tf, "image", "label", cache=False)
        assert cached.cached and not plain.cached
        for a, b in zip(_items(cached), _items(plain)):
            assert a.shape == (3, 24, 24) and torch.equal(a, b)


@pytest.mark.parametrize("options", [AUGMENT, dict(color_jitter=(0.4, 0.4, 0.4, 0.1), hflip=0.5)],
                         ids=["rand-augment-on-pil", "jitter-on-uint8-tensors"])
def test_cached_train_keeps_small_images_and_shrinks_large_ones(tiny_cfg, options):
    tf = create_transforms(tiny_cfg, training=True, **options)
    ds = ImageClassificationDataset(_odd_sizes(), tf, "image", "label", cache=True)
    assert tf.cache_size == (32, 32)  # 24 / crop_pct 0.75
    # shorter side at most 32: 40x30, 25x50 and 12x20 stay; 64x64 -> 32x32; 90x33 -> 87x32 (W x H)
    assert [tuple(t.shape) for t in ds._cache] == [(3, 30, 40), (3, 50, 25), (3, 32, 32), (3, 20, 12), (3, 32, 87)]
    assert all(t.dtype == torch.uint8 for t in ds._cache)
    items = _items(ds)
    assert all(item.shape == (3, 24, 24) and item.dtype == torch.float32 for item in items)
    if options.get("re_prob"):
        return  # random erasing fills with unbounded noise; the range check below needs it off
    # normalised with the cfg's mean/std: a 0..255 image maps into [-mean/std, (1-mean)/std] per channel
    low = -torch.tensor(tiny_cfg["mean"]) / torch.tensor(tiny_cfg["std"])
    high = (1 - torch.tensor(tiny_cfg["mean"])) / torch.tensor(tiny_cfg["std"])
    for item in items:
        flat = item.flatten(1)
        assert bool((flat.min(1).values >= low - 1e-5).all() and (flat.max(1).values <= high + 1e-5).all())


def test_cache_is_one_uint8_tensor_while_the_sizes_agree(synthetic, tiny_cfg):
    """Same-size images fill one preallocated tensor; an image of another size, even the last one, turns the cache
    into a list whose entries are the same images."""
    tf = create_transforms(tiny_cfg, training=True)
    same = ImageClassificationDataset(synthetic, tf, "image", "label", cache=True)
    assert isinstance(same._cache, torch.Tensor) and same._cache.shape == (30, 3, 16, 16)
    assert same._cache.dtype == torch.uint8
    odd = Image.fromarray(np.zeros((20, 12, 3), dtype=np.uint8))  # 12 x 20: kept as it is (shorter side <= 32)
    mixed_hf = datasets.Dataset.from_dict({"image": [*synthetic["image"][:3], odd], "label": [0, 1, 2, 0]},
                                          features=synthetic.features)
    mixed = ImageClassificationDataset(mixed_hf, tf, "image", "label", cache=True)
    assert isinstance(mixed._cache, list) and [tuple(t.shape) for t in mixed._cache] == [(3, 16, 16)] * 3 + [(3, 20, 12)]
    assert all(torch.equal(a, b) for a, b in zip(mixed._cache[:3], same._cache[:3]))


@pytest.mark.parametrize("cache", [True, False])
def test_train_items_depend_only_on_torch_rng(synthetic, tiny_cfg, cache):
    tf = create_transforms(tiny_cfg, training=True, **AUGMENT)
    ds = ImageClassificationDataset(synthetic, tf, "image", "label", cache=cache)
    runs = []
    for torch_seed, other_seed in [(7, 1), (7, 2), (8, 1)]:
        torch.manual_seed(torch_seed)
        random.seed(other_seed)
        np.random.seed(other_seed)
        state = random.getstate()
        runs.append(torch.stack(_items(ds, range(8))))
        assert random.getstate() == state  # the global Python RNG is left as found
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_dataloader_workers_are_reproducible(synthetic, tiny_cfg):
    tf = create_transforms(tiny_cfg, training=True, **AUGMENT)
    datasets_ = [ImageClassificationDataset(synthetic, tf, "image", "label", cache=c) for c in (True, False)]

    def epoch(ds, seed):
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(seed))
        return [(x, y) for x, y in loader]

    for ds in datasets_:
        first, again, other = epoch(ds, 0), epoch(ds, 0), epoch(ds, 1)
        assert sum(len(y) for _, y in first) == 30
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
        assert not torch.equal(first[0][0], other[0][0])


@pytest.mark.parametrize("cache", [True, False])
def test_dataset_pickles(synthetic, tiny_cfg, cache):
    ds = ImageClassificationDataset(synthetic, create_transforms(tiny_cfg, training=False), "image", "label",
                                    cache=cache)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cached == cache and all(torch.equal(a, b) for a, b in zip(_items(ds), _items(clone)))


def test_corrupt_image_is_named(image_folder, tiny_cfg):
    (image_folder / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    bundle = load_data(path=image_folder, eval_fraction=0.25)
    split = "train" if "broken.png" in str(bundle.train.cast_column("image", datasets.Image(decode=False))["image"]) \
        else "eval"
    tf = create_transforms(tiny_cfg, training=False)
    named = rf"cannot decode the image in row \d+ of the {split} split \(.*broken\.png\)"
    for cache in (True, False):  # decoded into the cache, or found by check_images: either way, up front
        with pytest.raises(DataError, match=named) as info:
            ImageClassificationDataset.from_bundle(bundle, split, tf, cache=cache)
        assert "Fix:" in str(info.value)


def _encoded(fmt: str, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _files_dataset(folder, files: dict[str, bytes], embed: bool = False) -> datasets.Dataset:
    """One row per file, in order, as paths (like an image folder) or as embedded bytes (like a Hub parquet)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    images = [{"bytes": data, "path": None} if embed else str(folder / name) for name, data in files.items()]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(len(files))]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(names=["a", "b"])}))


UNREADABLE = {
    "garbage-bytes": lambda png: b"\x00\xff\x13 these bytes are no image format",
    "empty-file": lambda png: b"",
    "text-file": lambda png: b"file_name,label\ncat.png,cat\n",
    "png-signature-then-garbage": lambda png: png[:8] + b"not really a png",
    "truncated-png": lambda png: png[: len(png) // 2],  # its header reads; verify() finds the chunks cut short
}


@pytest.mark.parametrize("embed", [False, True], ids=["file", "embedded-bytes"])
@pytest.mark.parametrize("damage", list(UNREADABLE))
def test_check_images_names_an_unreadable_image_before_any_item_is_read(damage, embed, tmp_path, tiny_cfg):
    png = _encoded("PNG")
    files = {f"{i}.png": png for i in range(5)} | {"1.png": UNREADABLE[damage](png)}
    # rows reversed through an indices mapping: the row named is the row of the dataset as given
    hf = _files_dataset(tmp_path, files, embed).select([4, 3, 2, 1, 0])
    where = r"embedded image bytes" if embed else r".*1\.png"
    with pytest.raises(DataError, match=rf"cannot decode the image in row 3 of the train split \({where}\)") as info:
        ImageClassificationDataset(hf, create_transforms(tiny_cfg, training=False), "image", "label", cache=False,
                                   split="train")
    message = str(info.value)
    assert "Fix: replace or remove the unreadable image file" in message and "\n" not in message
    assert " at 0x" not in message  # no memory address of an in-memory file


@pytest.mark.parametrize("cache", [True, False])
def test_a_missing_image_is_named(cache, tiny_cfg):
    hf = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4)), None], "label": [0, 1]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["a", "b"])}))
    with pytest.raises(DataError, match=r"the image in row 1 of the train split is missing \(null\)\. Fix:"):
        ImageClassificationDataset(hf, create_transforms(tiny_cfg, training=False), "image", "label", cache=cache,
                                   split="train")


def test_check_images_passes_what_decoding_accepts_without_decoding(image_folder, tmp_path, tiny_cfg, monkeypatch):
    tf = create_transforms(tiny_cfg, training=False)
    png, jpeg = _encoded("PNG"), _encoded("JPEG", size=64)  # 64 px: the cut lands in the pixel data
    hf = _files_dataset(tmp_path / "odd", {"no-end-chunk.png": png[:-12], "cut-short.jpg": jpeg[: len(jpeg) // 2]})
    # Small data is decoded in full up front: the cut-short JPEG is found there.
    with pytest.raises(DataError, match=r"cannot decode the image in row 1 of the eval split \(.*cut-short\.jpg\)"):
        ImageClassificationDataset(hf, tf, "image", "label", cache=False, split="eval")
    # Data over the cache budget gets the header check only.
    monkeypatch.setattr("hubft.data._dataset.CACHE_AUTO_MAX_BYTES", 0)
    # A PNG without IEND fails verify() yet decodes: it is decoded to be sure, and accepted
    ds = ImageClassificationDataset(hf, tf, "image", "label", cache=False, split="eval")
    assert ds[0][0].shape == (3, 24, 24)
    # A JPEG cut short in its pixel data passes the header check; reading it names it as the cache would
    with pytest.raises(DataError, match=r"cannot decode the image in row 1 of the eval split \(.*cut-short\.jpg\)"):
        ds[1]
    with pytest.raises(DataError, match=r"row 1 of the eval split \(.*cut-short\.jpg\)"):
        ImageClassificationDataset(hf, tf, "image", "label", cache=True, split="eval")
    # Sound images of every mode pass without a single full decode
    monkeypatch.setattr(ImageClassificationDataset, "_decode", lambda self, index: pytest.fail("decoded"))
    folder = load_data(path=image_folder).train
    assert not ImageClassificationDataset(folder, tf, "image", "label", cache=False).cached


def test_cache_auto_follows_the_size_budget(synthetic, tiny_cfg, monkeypatch):
    tf = create_transforms(tiny_cfg, training=False)
    assert ImageClassificationDataset(synthetic, tf, "image", "label").cached
    monkeypatch.setattr(dataset_module, "CACHE_AUTO_MAX_BYTES", 30 * 3 * 24 * 24 - 1)
    assert not ImageClassificationDataset(synthetic, tf, "image", "label").cached
    assert ImageClassificationDataset(synthetic, tf, "image", "label", cache=True).cached
    custom = ImageClassificationDataset(synthetic, lambda im: torch.zeros(1), "image", "label")
    assert not custom.cached and custom[0][0].shape == (1,)
    with pytest.raises(ConfigError, match="cache=True needs"):
        ImageClassificationDataset(synthetic, lambda im: torch.zeros(1), "image", "label", cache=True)


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda ds, tf: ImageClassificationDataset(ds, tf, "image", "tag"), DataError, "'tag' not found"),
        (lambda ds, tf: ImageClassificationDataset(ds.cast_column("image", datasets.Image(decode=False))
                                                   .map(lambda r: {"path": "x"}), tf, "path", "label"),
         DataError, "not datasets.Image"),
        (lambda ds, tf: ImageClassificationDataset(ds, tf, "image", "label", multi_label=True), ConfigError,
         "multi_label=True"),
        (lambda ds, tf: ImageClassificationDataset(ds, tf, "image", "label", num_classes=2), DataError,
         "label 2 in row 20 is out of range"),
        (lambda ds, tf: ImageClassificationDataset(ds, tf, "image", "label", cache="yes"), ConfigError, "cache"),
        (lambda ds, tf: ImageClassificationDataset(
            datasets.Dataset.from_dict({"image": [Image.new("RGB", (2, 2))], "label": [[0]]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "label": datasets.List(datasets.Value("int64"))})),
            tf, "image", "label", multi_label=True), ConfigError, "num_classes"),
    ],
    ids=["missing-column", "not-an-image-column", "multi-label-mismatch", "label-out-of-range", "bad-cache",
         "multi-label-without-num-classes"],
)
def test_bad_arguments(synthetic, tiny_cfg, build, error, words):
    with pytest.raises(error, match="Fix:") as info:
        build(synthetic, create_transforms(tiny_cfg, training=False))
    assert words in str(info.value)


@pytest.mark.parametrize(("training", "options"), [(False, {}), (True, {}), (True, {"auto_augment": "rand-m9-mstd0.5"}),
                                                   (True, {"color_jitter": 0.4})])
def test_uint8_items_normalise_to_exactly_the_float_items(synthetic, tiny_cfg, training, options):
    """normalize=False hands out the cached uint8 images; transform.normalize, per image or on the stacked batch,
    gives bit for bit what the dataset's own normalisation gives, augmentation included."""
    tf = create_transforms(tiny_cfg, training=training, **options)
    floats = ImageClassificationDataset(synthetic, tf, "image", "label", cache=True)
    raw = ImageClassificationDataset(synthetic, tf, "image", "label", cache=True, normalize=False)
    assert floats.normalized and not raw.normalized

    def items(ds):
        out = []
        for i in range(len(ds)):
            torch.manual_seed(i)  # the same augmentation draws for both datasets
            out.append(ds[i][0])
        return out

    pixels, expected = items(raw), items(floats)
    assert all(p.dtype == torch.uint8 for p in pixels) and all(e.dtype == torch.float32 for e in expected)
    assert all(torch.equal(tf.normalize(p), e) for p, e in zip(pixels, expected))
    assert torch.equal(tf.normalize(torch.stack(pixels)), torch.stack(expected))


def test_random_erasing_or_no_cache_keeps_float_items(synthetic, tiny_cfg):
    """Random erasing works on normalised images, and the uncached path is timm's PIL pipeline: both stay float."""
    erasing = create_transforms(tiny_cfg, training=True, re_prob=0.5)
    assert not erasing.defers_normalize
    for tf, cache in ((erasing, True), (create_transforms(tiny_cfg, training=True), False)):
        ds = ImageClassificationDataset(synthetic, tf, "image", "label", cache=cache, normalize=False)
        assert ds.normalized and ds[0][0].dtype == torch.float32
