"""The segmentation tour through the local Hub: a backbone trained as a classifier and a shapes dataset (with its
id2label.json) are pulled, a segmentation model is fine-tuned and pushed, then pulled back with identical logits."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import torch
import yaml

import hubft
from hubft.hub.push import push_to_hub
from hubft.testing import reset_process_state

pytestmark = pytest.mark.slow


def test_a_segmentation_model_is_pushed_and_pulled_with_identical_logits(hub, api, tmp_path):
    from huggingface_hub import ModelCard

    from hubft.data import SHAPE_CLASSES, make_synthetic_segmentation_dataset

    tag = uuid.uuid4().hex[:6]
    base_repo, data_repo, out_repo = (f"{hub.user}/seg-{kind}-{tag}" for kind in ("base", "data", "model"))
    base = hubft.create_model("test_convnext", label_names=["x", "y"], pretrained=False)  # a classifier first
    hubft.save_pretrained(base, tmp_path / "base")
    push_to_hub(tmp_path / "base", base_repo, token=hub.token)
    shapes = make_synthetic_segmentation_dataset(12, 32, seed=0)
    shapes.push_to_hub(data_repo, token=hub.token)
    api.upload_file(path_or_fileobj=json.dumps(dict(enumerate(SHAPE_CLASSES))).encode(),
                    path_in_repo="id2label.json", repo_id=data_repo, repo_type="dataset")

    out = tmp_path / "run"
    config = {
        "model": {"name": f"hf-hub:{base_repo}", "task": "semantic-segmentation"},
        "data": {"name": data_repo, "image_size": 32, "eval_fraction": 0.25},
        "train": {"epochs": 1, "max_updates": 2, "batch_size": 4, "output_dir": str(out), "cpu": True},
        "hub": {"push": True, "repo_id": out_repo},
    }
    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        mp.setenv("HF_TOKEN", hub.token)
        try:
            hubft.finetune(config)
        finally:
            reset_process_state()

    pulled = hubft.from_pretrained(f"hf-hub:{out_repo}").eval()
    local = hubft.from_pretrained(f"local-dir:{out}").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pulled(x), local(x))
    assert pulled.label_names == list(SHAPE_CLASSES)
    from PIL import Image

    from hubft.inference import predict_masks

    odd = Image.new("RGB", (40, 24), (220, 60, 60))
    masks = predict_masks(f"hf-hub:{out_repo}", [odd, shapes[0]["image"]])
    assert masks[0].shape == (24, 40) and masks[1].shape == (32, 32) and int(masks[0].max()) < len(SHAPE_CLASSES)
    card = ModelCard.load(out_repo, token=hub.token)
    assert card.data.pipeline_tag == "image-segmentation" and card.data.base_model == base_repo
    assert card.data.datasets == [data_repo]
    assert [m["type"] for m in card.data.to_dict()["model-index"][0]["results"][0]["metrics"]][0] == "mean_iou"
    assert "segmentation_sample.png" in card.text and "segmentation_sample.png" in api.list_repo_files(out_repo)

    # `hubft eval` scores the pulled model on the Hub dataset as predict_masks + the metrics would, and pushes the
    # result into the card beside the run's own.
    from hubft.cli import main
    from hubft.tasks import segmentation_metrics

    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
        mp.setenv("HF_TOKEN", hub.token)
        assert main(["eval", f"hf-hub:{out_repo}", "--data.name", data_repo, "--data.eval_split", "train",
                     "-o", str(tmp_path / "eval"), "--batch-size", "5", "--push"]) == 0
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    target = torch.stack([torch.from_numpy(np.asarray(m, dtype=np.int64)) for m in shapes["mask"]])
    expected = segmentation_metrics(torch.stack(predict_masks(f"hf-hub:{out_repo}", list(shapes["image"]))),
                                    target, list(SHAPE_CLASSES))
    assert scored["confusion_matrix"] == expected["confusion_matrix"] and scored["num_samples"] == 12
    assert scored["mean_iou"] == pytest.approx(expected["mean_iou"])
    results = ModelCard.load(out_repo, token=hub.token).data.eval_results
    assert any(r.dataset_split == "train" and r.metric_type == "mean_iou" for r in results)
    assert any(r.dataset_split != "train" and r.metric_type == "mean_iou" for r in results)  # the run's, kept


def test_predict_refuses_a_segmentation_model_and_eval_refuses_what_does_not_apply_to_it(tmp_path):
    from hubft.errors import ConfigError
    from hubft.inference import evaluate_model, predict
    from hubft.models import create_segmentation_model

    model = create_segmentation_model("resnet10t", label_names=["a", "b"], pretrained=False)
    model.hubft_task = {"name": "semantic-segmentation", "multi_label": False}  # as a run records it
    hubft.save_pretrained(model, tmp_path)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    with pytest.raises(ConfigError, match="one class per pixel"):
        predict(str(tmp_path), [str(tmp_path / "photo.png")])
    with pytest.raises(ConfigError, match="--tta does not apply to a semantic-segmentation model"):
        evaluate_model(str(tmp_path), path=str(tmp_path), tta="hflip")
    with pytest.raises(ConfigError, match="--data.classes does not apply"):
        evaluate_model(str(tmp_path), path=str(tmp_path), classes=["a"])
