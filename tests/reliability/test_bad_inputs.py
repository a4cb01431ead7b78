"""The bad-input matrix: every foreseeable mistake gives a one-line cause-and-fix message, a non-zero exit, no
traceback (unless ``--debug``), and leaves the outputs of an earlier run in ``train.output_dir`` untouched.

Each case runs ``hubft finetune --config <a good config> <the mistake>`` in-process, with ``train.output_dir``
holding a finished run. The error table in ``docs/errors.md`` is generated from these records
(``tests/reliability/report.py``), so a user can look their message up there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from hubft.cli import main


@dataclass(frozen=True)
class Case:
    wrong: str  # what is wrong, in the words of docs/errors.md
    argv: list  # appended to `finetune --config CONFIG`; "<name>" is a path from `inputs` (or the run)
    needle: str  # the message must contain this (it names the bad value or file)
    code: int = 2
    setup: Callable[[Path], None] | None = None  # damages the copied earlier run first
    untouched: bool = True  # False: the mistake can only surface once training started (see the case)
    command: str = "finetune"
    fix: bool = True  # False: the message has no "Fix:" yet (named in the case, to be fixed where it is raised)
    hub: bool = False  # True: the "<name>"s include datasets published on the local Hub (``streamed_inputs``)


def _drop(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _flip_newest_weights(run: Path) -> None:
    path = run / "checkpoints" / "step-00000010" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.unlink()  # a hard link to the shared finished run (see _copy_run): write a file of its own
    path.write_bytes(bytes(data))


_SEG = ["--model.task", "semantic-segmentation", "--data.re_prob", "0"]  # the good config erases patches
CASES = {
    # -- the config itself
    "unknown-config-key": Case("a misspelt key in the YAML", ["--config", "<typo_key>"], "did you mean epochs"),
    "unknown-config-section": Case("a misspelt section in the YAML", ["--config", "<typo_section>"],
                                   "did you mean train"),
    "unknown-flag": Case("a misspelt command-line flag", ["--train.epoch", "3"], "did you mean --train.epochs"),
    "wrong-type-flag": Case("a value of the wrong type on the command line", ["--train.batch_size", "eight"],
                            "train.batch_size must be int"),
    "wrong-type-yaml": Case("a value of the wrong type in the YAML", ["--config", "<wrong_type>"],
                            "optim.lr must be float"),
    "not-a-choice": Case("a value outside a fixed set", ["--train.mixed_precision", "fp8"],
                         "train.mixed_precision must be one of"),
    "value-out-of-range": Case("a number out of range", ["--train.epochs", "0"], "train.epochs = 0"),
    "negative-lr": Case("a negative learning rate", ["--optim.lr", "-1"], "optim.lr = -1.0"),
    "negative-clip-norm": Case("a negative gradient-clipping norm (torch would flip the gradients)",
                               ["--optim.clip_grad_norm", "-1"], "optim.clip_grad_norm"),
    "dropout-out-of-range": Case("a dropout rate >= 1", ["--model.drop_rate", "2"], "model.drop_rate"),
    "unfreeze-without-freeze": Case("unfreeze_epoch set but nothing frozen", ["--model.unfreeze_epoch", "1"],
                                    "model.unfreeze_epoch"),
    "config-file-missing": Case("--config names no file", ["--config", "<missing>"], "does not exist"),
    "config-not-yaml": Case("the config file is not YAML", ["--config", "<not_yaml>"], "is not valid YAML"),
    "config-not-a-mapping": Case("the config file is a list", ["--config", "<a_list>"], "must be a mapping"),
    "output-dir-is-a-file": Case("train.output_dir is a file", ["--train.output_dir", "<a_file>"], "is a file"),
    "unknown-tracker": Case("an unknown train.log_with tracker", ["--train.log_with", "nonexistent_tracker"],
                            "nonexistent_tracker"),
    # -- names of registered things
    "unknown-model": Case("an unknown backbone", ["--model.name", "resnet99"], "unknown timm architecture"),
    "unknown-loss": Case("an unknown loss", ["--loss.name", "cross_entropi"], "did you mean 'cross_entropy'"),
    "unknown-scheduler": Case("an unknown LR schedule", ["--schedule.name", "cosin"], "did you mean 'cosine'"),
    "unknown-optimizer": Case("an unknown optimizer", ["--optim.name", "adamw2"], "did you mean 'adamw'"),
    "unknown-optimizer-option": Case("an optimizer option it does not take", ["--optim.options", "{gamam: 3}"],
                                     "gamam"),
    "bad-optimizer-option": Case("an optimizer option of the wrong shape", ["--optim.options", "{betas: 3}"],
                                 "betas=3"),
    "unknown-loss-option": Case("a loss option it does not take", ["--loss.options", "{gamam: 2}"], "gamam"),
    "unknown-schedule-option": Case("a schedule option it does not take", ["--schedule.options", "{foo: 1}"],
                                    "takes no argument 'foo'"),
    "regression-loss": Case("a regression loss for class labels", ["--loss.name", "mse"], "regression"),
    # -- data
    "no-data-source": Case("neither data.name nor data.path", ["--data.path", "null"], "give exactly one of"),
    "two-data-sources": Case("both data.name and data.path", ["--data.name", "someone/data"],
                             "give exactly one of"),
    "data-path-missing": Case("data.path does not exist", ["--data.path", "<missing>"], "not found"),
    "label-column-missing": Case("the label column does not exist", ["--data.label_column", "species"],
                                 "label column 'species' not found"),
    "image-column-missing": Case("the image column does not exist", ["--data.image_column", "pixels"],
                                 "image column 'pixels' not found"),
    "labels-out-of-range": Case("a label outside the ClassLabel's classes", ["--data.path", "<out_of_range>"],
                                "is out of range"),
    "empty-dataset": Case("an image folder without images", ["--data.path", "<empty>"], "doesn't contain any"),
    "unreadable-image": Case("an image file that does not decode", ["--data.path", "<bad_image>"],
                             "cannot decode the image"),
    "unreadable-image-not-cached": Case(
        "an image file that does not decode, with the images not cached (checked up front all the same)",
        ["--data.path", "<one_bad_image>", "--data.cache", "false"], "cannot decode the image in row"),
    "truncated-jpeg-not-cached": Case(
        "a JPEG cut short in its pixel data, with the images not cached (data within the cache budget is decoded "
        "once up front to check it; larger data gets a header check, and such a JPEG surfaces at its first batch)",
        ["--data.path", "<cut_short_jpeg>", "--data.cache", "false"], "image file is truncated"),
    "batch-of-one-with-batchnorm": Case("a batch size that leaves one image in the last batch of a BatchNorm model",
                                        ["--train.batch_size", "17"], "train.batch_size = 17"),
    "single-class": Case("only one class left to learn", ["--data.classes", "[class_0]"], "at least 2"),
    "unknown-class": Case("data.classes names a class the data lacks", ["--data.classes", "[cat, dog]"],
                          "unknown class 'cat'"),
    "eval-split-missing": Case("data.eval_split names a split the data lacks", ["--data.eval_split", "test"],
                               "split 'test' not found"),
    # -- streaming
    "streaming-a-local-folder": Case("data.streaming with a local data.path (streaming reads a Hub dataset)",
                                     ["--data.streaming", "true"], "cannot be combined with data.streaming"),
    "streaming-with-workers": Case("data.streaming with data-loader workers",
                                   ["--data.path", "null", "--data.name", "someone/data", "--data.streaming", "true",
                                    "--data.num_workers", "2"], "data.num_workers = 2 cannot be combined"),
    "streaming-option-without-streaming": Case("a streaming option without data.streaming",
                                               ["--data.shuffle_buffer", "64"], "data.shuffle_buffer = 64 would be"),
    "updates-per-epoch-without-streaming": Case("train.updates_per_epoch without data.streaming",
                                                ["--train.updates_per_epoch", "5"],
                                                "train.updates_per_epoch = 5 would be ignored"),
    "streaming-without-a-length": Case(
        "a streamed dataset whose size the Hub does not record, without train.updates_per_epoch",
        ["--data.path", "null", "--data.name", "<unsized_stream>", "--data.streaming", "true"],
        "set train.updates_per_epoch", hub=True),
    "streaming-without-an-eval-split": Case(
        "a streamed dataset without an eval split (a stream cannot have one carved out)",
        ["--data.path", "null", "--data.name", "<stream_without_eval>", "--data.streaming", "true",
         "--train.updates_per_epoch", "2"], "has no eval split", hub=True),
    # -- segmentation data (model.task: semantic-segmentation)
    "streaming-segmentation": Case("data.streaming for segmentation (only classification data is streamed)",
                                   [*_SEG, "--data.path", "null", "--data.name", "someone/data", "--data.streaming",
                                    "true"], "only classification data is streamed"),
    "mask-size-differs": Case("a segmentation mask of another size than its image",
                              [*_SEG, "--data.path", "<seg_mask_size>"],
                              "px but its image is"),
    "mask-class-outside-labels": Case("a segmentation mask holding a class id outside the labels",
                                      [*_SEG, "--data.path", "<seg_bad_class>"],
                                      "holds class id 9"),
    "segmentation-no-id2label": Case("segmentation data without id2label.json (nor data.label_names)",
                                     [*_SEG, "--data.path", "<seg_no_id2label>"],
                                     "has no id2label.json"),
    "segmentation-no-mask-column": Case("segmentation data without the mask column named",
                                        [*_SEG, "--data.path", "<seg_good>",
                                         "--data.mask_column", "segmap"], "mask column 'segmap' is not an image"),
    "segmentation-image-without-mask": Case("a segmentation image without a mask of the same file stem",
                                            [*_SEG, "--data.path",
                                             "<seg_no_mask>"], "have no mask of the same stem"),
    # -- weights and the Hub
    "corrupt-weights": Case("a truncated model.safetensors", ["--model.name", "local-dir:<truncated>",
                                                              "--model.pretrained", "true"], "truncated"),
    "pickle-weights": Case("only pickle weights (pytorch_model.bin)", ["--model.name", "local-dir:<pickled>",
                                                                       "--model.pretrained", "true"],
                           "refuses to load"),
    "bad-model-repo-id": Case("a malformed hf-hub: model id", ["--model.name", "hf-hub:a/b/c"],
                              "invalid Hub repo id"),
    "bad-push-repo-id": Case("a malformed hub.repo_id", ["--hub.push", "true", "--hub.repo_id", "bad repo"],
                             "not a valid Hub repo id"),
    "push-without-repo-id": Case("hub.push without hub.repo_id", ["--hub.push", "true"], "hub.repo_id is missing"),
    "push-without-a-model": Case("`hubft push` of a directory without a model", ["<empty>", "alice/model"],
                                 "is missing; there is no model to push", command="push"),
    # -- adapters
    "unknown-adapter": Case("an adapter hubft does not know", ["--model.adapter", "qlora"],
                            "model.adapter = 'qlora' is invalid"),
    "adapter-on-random-weights": Case("an adapter without the backbone's pretrained weights",
                                      ["--model.adapter", "lora"], "needs the backbone's pretrained weights"),
    "adapter-with-freeze": Case("an adapter together with model.freeze",
                                ["--model.adapter", "lora", "--model.pretrained", "true", "--model.freeze", "true"],
                                "cannot be combined with model.adapter"),
    "adapter-options-without-adapter": Case("adapter options without an adapter",
                                            ["--model.adapter_options", "{r: 8}"], "would be ignored"),
    "unknown-adapter-option": Case("an adapter option peft's LoraConfig does not have",
                                   ["--model.name", "local-dir:<good_model>", "--model.pretrained", "true",
                                    "--model.adapter", "lora", "--model.adapter_options", "{rank: 8}"],
                                   "did you mean r?"),
    "bad-adapter-rank": Case("an adapter rank below 1",
                             ["--model.name", "local-dir:<good_model>", "--model.pretrained", "true",
                              "--model.adapter", "lora", "--model.adapter_options", "{r: 0}"],
                             "model.adapter_options.r = 0 is invalid"),
    "adapter-targets-match-nothing": Case(
        "adapter target_modules that name no module of the backbone (the candidates are listed)",
        ["--model.name", "local-dir:<good_model>", "--model.pretrained", "true", "--model.adapter", "lora",
         "--model.adapter_options", "{target_modules: [qkv, proj]}"], "matches no module of ResNet"),
    "merge-adapter-without-adapter": Case("hub.merge_adapter without an adapter", ["--hub.merge_adapter", "true"],
                                          "there is no adapter to merge"),
    "merge-a-full-model": Case("`hubft merge` of a full model", ["<good_model>", "<run>/merged"],
                               "holds a full model", command="merge"),
    "merge-segmentation-adapter-other-decoder": Case(
        "`hubft merge` of a segmentation adapter whose backbone now gives another decoder",
        ["<seg_adapter_other_decoder>", "<run>/merged"], "trained with a decoder of feature_indices", command="merge"),
    "merge-segmentation-adapter-without-decoder": Case(
        "`hubft merge` of a segmentation adapter that does not record its decoder (an older hubft saved it)",
        ["<seg_adapter_without_decoder>", "<run>/merged"], "does not record its decoder", command="merge"),
    "segmentation-on-a-classifier-adapter": Case("model.task semantic-segmentation on a classifier's adapter",
                                                 [*_SEG, "--data.path", "<seg_good>", "--model.name",
                                                  "local-dir:<classifier_adapter>", "--model.pretrained", "true"],
                                                 "is a classifier's adapter, not a segmentation model's"),
    "merge-no-such-directory": Case("`hubft merge` of a directory that does not exist", ["<missing>", "<run>/merged"],
                                    "is not a directory", command="merge"),
    # -- sharded training
    "fsdp-with-ema": Case("train.fsdp with train.ema (a whole-model copy beside the shards)",
                          ["--train.fsdp", "true", "--train.ema", "true"],
                          "train.fsdp cannot be combined with train.ema"),
    "fsdp-with-adapter": Case("train.fsdp with model.adapter",
                              ["--train.fsdp", "true", "--model.adapter", "lora", "--model.pretrained", "true"],
                              "train.fsdp cannot be combined with model.adapter"),
    "fsdp-with-fp16": Case("train.fsdp with fp16 mixed precision (use bf16)",
                           ["--train.fsdp", "true", "--train.mixed_precision", "fp16"],
                           "train.fsdp cannot be combined with train.mixed_precision 'fp16'"),
    # -- resuming
    "resume-with-changed-config": Case("resume with a setting the run cannot continue under",
                                       ["--train.resume", "latest", "--train.batch_size", "3"],
                                       "train.batch_size: checkpoint 2 vs now 3"),
    "resume-without-checkpoints": Case("resume: latest where there is no checkpoint",
                                       ["--train.resume", "latest", "--train.output_dir", "<empty>"],
                                       "holds no complete checkpoint"),
    "resume-from-a-non-checkpoint": Case("resume from a directory that is no checkpoint",
                                         ["--train.resume", "<empty>"], "no manifest.json"),
    "resume-from-a-corrupt-checkpoint": Case("resume from a checkpoint with a flipped bit",
                                             ["--train.resume", "<run>/checkpoints/step-00000010"],
                                             "model.safetensors' is corrupt", setup=_flip_newest_weights),
    "new-run-over-an-interrupted-one": Case("a new run (no resume) where an interrupted run left checkpoints",
                                            [], "holds an interrupted run", setup=_drop("metrics.json")),
    # -- paths that cannot hold what is asked of them
    "output-dir-under-a-file": Case("train.output_dir under a regular file", ["--train.output_dir", "<a_file>/sub"],
                                    "is not a directory"),
    "output-dir-under-dev-null": Case("train.output_dir under a device file", ["--train.output_dir", "/dev/null/x"],
                                      "'/dev/null' is not a directory"),
    "output-dir-in-proc": Case("train.output_dir in a virtual file system", ["--train.output_dir", "/proc/hubft-run"],
                               "cannot be created"),
    "config-is-a-directory": Case("--config names a directory", ["--config", "<empty>"], "is a directory"),
    "data-path-under-a-file": Case("data.path under a regular file", ["--data.path", "<a_file>/images"],
                                   "not found"),
    "resume-under-a-file": Case("train.resume under a regular file", ["--train.resume", "<a_file>/step-1"],
                                "is not a checkpoint directory"),
    "pull-under-a-file": Case("`hubft pull -o` under a regular file", ["alice/model", "-o", "<a_file>/model"],
                              "is not a directory", command="pull"),
    "plot-under-a-file": Case("`hubft plot-lr -o` under a regular file", ["-o", "<a_file>/lr.png"],
                              "is a file, not a directory", command="plot-lr"),
    "lr-find-range": Case("`hubft lr-find` with a start above its end", ["--start", "1", "--end", "0.1"],
                          "start=1.0 and end=0.1 must be numbers with 0 < start < end", command="lr-find"),
    # -- after training: eval, predict, export
    "eval-no-such-model": Case("`hubft eval` of a model directory that does not exist",
                               ["local-dir:<missing>", "--data.path", "<images>"], "nope.yaml", command="eval"),
    "eval-labels-unknown": Case("`hubft eval` on data with labels the model does not know",
                                ["<good_model>", "--data.path", "<images>"], "does not know", command="eval"),
    "eval-without-labels": Case("`hubft eval` on data without a label column",
                                ["<good_model>", "--data.path", "<no_labels>"], "label column", command="eval"),
    "eval-segmentation-tta": Case("`hubft eval --tta` of a segmentation model",
                                  ["<seg_model>", "--data.path", "<seg_good>", "--tta", "hflip"],
                                  "--tta does not apply to a semantic-segmentation model", command="eval"),
    "eval-segmentation-unknown-class": Case("`hubft eval` of a segmentation model on masks with a class id it lacks",
                                            ["<seg_model>", "--data.path", "<seg_good>"],
                                            "but there are 2 classes", command="eval"),
    "predict-segmentation": Case("`hubft predict` of a segmentation model (one class per pixel)",
                                 ["<seg_model>", "<images>"], "one class per pixel", command="predict"),
    "predict-undecodable": Case("`hubft predict` of an image file that does not decode",
                                ["<good_model>", "<bad_image>"], "cannot decode the image", command="predict"),
    "predict-nothing-there": Case("`hubft predict` of a path that does not exist", ["<good_model>", "<missing>"],
                                  "is no file, folder or glob pattern", command="predict"),
    "predict-output-type": Case("`hubft predict -o` with a file type it cannot write",
                                ["<good_model>", "<images>", "-o", "<run>/predictions.txt"], ".jsonl or .csv",
                                command="predict"),
    "export-under-a-file": Case("`hubft export -o` under a regular file", ["<good_model>", "-o", "<a_file>/m.onnx"],
                                "is a file, not a directory", command="export"),
    "hub-root-under-a-file": Case("`hubft hub serve --root` under a regular file",
                                  ["serve", "--root", "<a_file>/hub"], "is not a directory", command="hub"),
}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory, images) -> dict:
    """Named bad inputs (paths) for the cases' ``{name}`` placeholders."""
    import datasets
    import torch

    import hubft
    from hubft.data import write_image_folder

    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "typo_key.yaml").write_text("train:\n  epoch: 3\n")
    (root / "typo_section.yaml").write_text("training:\n  epochs: 3\n")
    (root / "wrong_type.yaml").write_text("optim:\n  lr: fast\n")
    (root / "not_yaml.yaml").write_text("train: [\n")
    (root / "a_list.yaml").write_text("- train\n- data\n")
    (root / "a_file").write_text("not a directory\n")
    (root / "empty" / "class_a").mkdir(parents=True)
    (root / "empty" / "class_b").mkdir()
    bad = write_image_folder(root / "bad_image", num_classes=2, per_class=8, size=16)
    for i in range(0, 8, 2):  # enough that the train split holds some whatever the split
        (bad / "class_0" / f"{i}.png").write_bytes(b"this is not a png")
    one_bad = write_image_folder(root / "one_bad_image", num_classes=3, per_class=8, size=16)
    (one_bad / "class_1" / "3.png").write_bytes(b"this is not a png")
    cut = write_image_folder(root / "cut_short_jpeg", num_classes=3, per_class=8, size=16)
    photo = io.BytesIO()
    # Seeded noise (PIL's effect_noise is not): the decoder's message counts the bytes left, and docs/errors.md shows it.
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo, "JPEG")  # 64 px: the cut lands in the pixels
    for i in range(0, 8, 2):  # enough that the train split holds some whatever the split
        (cut / "class_0" / f"{i}.png").unlink()
        (cut / "class_0" / f"{i}.jpg").write_bytes(photo.getvalue()[: len(photo.getvalue()) // 2])
    files = sorted(str(p) for p in images.rglob("*.png"))
    labels = [i % 3 for i in range(len(files))]
    labels[5] = 7
    ds = datasets.Dataset.from_dict({"image": files, "label": labels}).cast_column("image", datasets.Image())
    ds.cast_column("label", datasets.ClassLabel(names=["a", "b", "c"])).to_parquet(str(root / "out_of_range.parquet"))
    model = hubft.create_model("test_resnet", label_names=["a", "b"], pretrained=False)
    for name in ("truncated", "pickled"):
        hubft.save_pretrained(model, root / name)
    weights = root / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (root / "pickled" / "model.safetensors").unlink()
    torch.save(model.state_dict(), root / "pickled" / "pytorch_model.bin")
    hubft.save_pretrained(model, root / "good_model")  # labels a, b: the images' classes are class_0..2
    datasets.Dataset.from_dict({"image": files}).to_parquet(str(root / "no_labels.parquet"))
    _segmentation_inputs(root)
    _adapter_inputs(root, f"local-dir:{root / 'good_model'}")
    return {"missing": root / "nope.yaml", "out_of_range": root / "out_of_range.parquet",
            "no_labels": root / "no_labels.parquet", "images": images, **{p.stem: p for p in root.iterdir()}}


@pytest.fixture(scope="session")
def streamed_inputs(local_hub, tmp_path_factory) -> dict:
    """Datasets on the local Hub for the streaming cases: parquet shards uploaded without a dataset card (so no
    recorded size), one with a validation split and one without."""
    from huggingface_hub import HfApi

    from hubft.data import make_synthetic_image_dataset

    api, root = HfApi(token=local_hub.token), tmp_path_factory.mktemp("streamed")
    data = make_synthetic_image_dataset(num_classes=3, per_class=4, size=8)
    found = {}
    for name, splits in (("unsized_stream", ("train", "validation")), ("stream_without_eval", ("train",))):
        (root / name).mkdir()
        for split in splits:
            data.to_parquet(str(root / name / f"{split}-00000-of-00001.parquet"))
        found[name] = f"{local_hub.user}/bad-inputs-{name.replace('_', '-')}"
        api.create_repo(found[name], repo_type="dataset")
        api.upload_folder(repo_id=found[name], repo_type="dataset", folder_path=str(root / name), path_in_repo="data")
    return found


def _segmentation_inputs(root: Path) -> None:
    """Shapes folders, each broken in one way (``seg_good`` is not)."""
    from hubft.data import write_segmentation_folder

    for name in ("seg_good", "seg_mask_size", "seg_bad_class", "seg_no_id2label", "seg_no_mask"):
        write_segmentation_folder(root / name, train=6, validation=2, size=16)
    Image.new("L", (8, 8)).save(root / "seg_mask_size" / "train" / "masks" / "002.png")
    Image.new("L", (16, 16), 9).save(root / "seg_bad_class" / "train" / "masks" / "003.png")
    (root / "seg_no_id2label" / "id2label.json").unlink()
    (root / "seg_no_mask" / "train" / "masks" / "001.png").unlink()
    from hubft.models import create_segmentation_model, save_pretrained

    model = create_segmentation_model("resnet10t", label_names=["background", "circle"], pretrained=False)
    model.hubft_task = {"name": "semantic-segmentation", "multi_label": False}  # as a run records it
    save_pretrained(model, root / "seg_model")  # 2 classes: the shapes' masks hold ids up to 3


def _adapter_inputs(root: Path, source: str) -> None:
    """Segmentation adapters on ``source`` whose records cannot rebuild them as trained, and a classifier's adapter."""
    import hubft
    from hubft.models import add_adapter, create_segmentation_model

    for name in ("seg_adapter_other_decoder", "seg_adapter_without_decoder"):
        model = create_segmentation_model(source, label_names=["a", "b"], head_init_seed=0)
        hubft.save_pretrained(add_adapter(model, "lora", r=2), root / name)
        config = json.loads((root / name / "adapter_config.json").read_text())
        decoder = config["auto_mapping"]["hubft"]["decoder"]
        if name.endswith("other_decoder"):
            decoder["feature_indices"] = decoder["feature_indices"][1:]
        else:
            del config["auto_mapping"]["hubft"]["decoder"]
        (root / name / "adapter_config.json").write_text(json.dumps(config))
    hubft.save_pretrained(add_adapter(hubft.create_model(source), "lora", r=2), root / "classifier_adapter")


def _copy_run(src: Path, dst: Path) -> None:
    """A copy of a finished run; its large files hard-linked (hubft replaces files, never rewrites them: the
    digest check would see it)."""
    def copy(s, d):
        os.link(s, d) if os.path.getsize(s) > 100_000 else shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line_cause_and_fix(case, tmp_path, make_config, finished_run, inputs, capsys,
                                                record_property, rel, request):
    c = CASES[case]
    run = tmp_path / "run"
    _copy_run(finished_run, run)
    if c.setup:
        c.setup(run)
    names = {k: str(v) for k, v in inputs.items()} | {"run": str(run)}
    if c.hub:
        names |= request.getfixturevalue("streamed_inputs")
    argv = list(c.argv)
    for key, value in names.items():
        argv = [a.replace(f"<{key}>", value) for a in argv]
    own_config = c.command != "finetune" or c.argv[:1] == ["--config"]
    head = [c.command] if own_config else ["finetune", "--config", str(make_config(tmp_path))]
    argv = head + argv
    before = _digest(run)

    code = main(argv)

    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("hubft: error:")]
    assert code == c.code, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    message = lines[0].removeprefix("hubft: error: ")
    assert c.needle in message
    assert ("Fix:" in message) == c.fix
    assert "Traceback" not in err + out
    if c.untouched:
        assert _digest(run) == before, "the earlier run's outputs changed"
    for key, value in sorted(names.items(), key=lambda kv: -len(kv[1])):
        message = message.replace(value, f"<{key}>")
    example = " ".join(["hubft", c.command] + ([] if own_config else ["--config", "<config>"]) + c.argv)
    record = {"id": case, "wrong": c.wrong, "example": example, "exit": code,
              "message": message.replace(str(tmp_path), "<tmp>"), "untouched": c.untouched}
    record_property("error_case", json.dumps(record))
    rel.check_documented_error(record)


def test_debug_shows_the_traceback(tmp_path, make_config, capsys):
    code = main(["--debug", "finetune", "--config", str(make_config(tmp_path)), "--optim.name", "adamw2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback (most recent call last)" in err and "hubft: error: unknown optimizer 'adamw2'" in err
