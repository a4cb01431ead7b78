# Semantic segmentation end to end, offline: `python recipes/segmentation_tour.py` (about a minute on 2 cores).
#
#   1. start hubft's local Hub and publish a synthetic shapes-on-texture set there with datasets (+ id2label.json)
#   2. a "pretrained backbone": a ConvNeXt trained as a *classifier* on other images, pushed like any model
#   3. fine-tune it for segmentation (model.task: semantic-segmentation) and push the result with its card
#   4. pull the pushed model by its repo id and score it on the validation masks with predict_masks
import json
import os
import socket
from pathlib import Path

OUT = Path("segmentation-output")

# huggingface_hub and datasets read HF_ENDPOINT once, at import: pick the port before importing them.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str((OUT / "hf-home").resolve()),
                  HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402

import hubft  # noqa: E402
from hubft.data import SHAPE_CLASSES, make_synthetic_image_dataset, make_synthetic_segmentation_dataset  # noqa: E402
from hubft.inference import predict_masks  # noqa: E402
from hubft.tasks import segmentation_metrics  # noqa: E402
from hubft.testing import LocalHub  # noqa: E402

with LocalHub(OUT / "hub", port=port, user="tour") as hub:
    os.environ["HF_TOKEN"] = hub.token  # the local server's own token, never written to a file

    # 1. The data, published the way anyone publishes a segmentation set: images, masks, and the class names.
    shapes = datasets.DatasetDict({"train": make_synthetic_segmentation_dataset(96, 32, seed=0),
                                   "validation": make_synthetic_segmentation_dataset(24, 32, seed=1)})
    shapes.push_to_hub("tour/shapes")
    HfApi().upload_file(path_or_fileobj=json.dumps(dict(enumerate(SHAPE_CLASSES))).encode(),
                        path_in_repo="id2label.json", repo_id="tour/shapes", repo_type="dataset")

    # 2. A backbone trained on something else (colour classes), standing in for an ImageNet checkpoint.
    hubft.finetune({"model": {"name": "test_convnext", "pretrained": False},
                    "data": {"image_size": 32},
                    "train": {"epochs": 2, "batch_size": 16, "output_dir": str(OUT / "backbone")},
                    "hub": {"push": True, "repo_id": "tour/colour-backbone"}},
                   dataset=make_synthetic_image_dataset(num_classes=4, per_class=24, size=32))

    # 3. The segmentation fine-tune: same config sections, a task, a Hub dataset with a mask column.
    result = hubft.finetune({
        "model": {"name": "hf-hub:tour/colour-backbone", "task": "semantic-segmentation"},
        "data": {"name": "tour/shapes", "image_size": 32},
        "optim": {"lr": 0.003},
        "train": {"epochs": 8, "batch_size": 16, "output_dir": str(OUT / "shapes-seg")},
        "hub": {"push": True, "repo_id": "tour/shapes-seg"},
    })

    # 4. What a user of the repo does: pull it by name and predict masks at each image's own size.
    validation = datasets.load_dataset("tour/shapes", split="validation")
    masks = predict_masks("hf-hub:tour/shapes-seg", list(validation["image"]))
    target = torch.from_numpy(np.stack([np.asarray(m) for m in validation["mask"]])).long()
    pulled = segmentation_metrics(torch.stack(masks), target, list(SHAPE_CLASSES))
    print(f"\nmean IoU on validation: {pulled['mean_iou']:.3f} (pulled model), "
          f"{result.final['mean_iou']:.3f} (the run's own evaluation)")
    # Both score the masks at their own size: the pulled model reproduces the run's evaluation.
    assert abs(pulled["mean_iou"] - result.final["mean_iou"]) < 1e-4, (pulled["mean_iou"], result.final["mean_iou"])
    print(f"model card: {hub.endpoint}/tour/shapes-seg (sample: {OUT / 'shapes-seg' / 'segmentation_sample.png'})")
