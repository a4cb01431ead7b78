"""Semantic segmentation end to end: CNN and plain-ViT backbones learn synthetic masks, resume exactly, and run on
two processes; ignored pixels carry no gradient."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml

import hubft
from hubft.data import SHAPE_CLASSES, make_synthetic_segmentation_dataset, write_segmentation_folder
from hubft.faults import FaultInjected
from hubft.testing import reset_process_state

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shapes():
    return datasets.DatasetDict({"train": make_synthetic_segmentation_dataset(16, 32, seed=0),
                                 "validation": make_synthetic_segmentation_dataset(4, 32, seed=1)})


def _config(out: Path, name: str = "test_convnext", **train) -> dict:
    return {
        "model": {"name": name, "pretrained": False, "task": "semantic-segmentation"},
        "data": {"image_size": 32, "label_names": list(SHAPE_CLASSES)},
        "optim": {"lr": 0.003, "weight_decay": 0.0},
        "schedule": {"name": "cosine", "warmup_steps": 1},
        "train": {"epochs": 3, "batch_size": 4, "output_dir": str(out), "log_every": 1, "cpu": True, **train},
    }


def _history(out: Path) -> list[float]:
    return [h["eval"]["mean_iou"] for h in json.loads((out / "metrics.json").read_text())["history"]]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_cnn_learns_masks_and_resumes_bit_identically(tmp_path, shapes, monkeypatch):
    straight = tmp_path / "straight"
    hubft.finetune(_config(straight, checkpoint_every=1), dataset=shapes)
    ious = _history(straight)
    assert ious[-1] > ious[0] + 0.05, ious

    resumed = tmp_path / "resumed"
    monkeypatch.setenv("HUBFT_FAULT", "after_optimizer_step@6:raise")
    with pytest.raises(FaultInjected):
        hubft.finetune(_config(resumed, checkpoint_every=1), dataset=shapes)
    monkeypatch.delenv("HUBFT_FAULT")
    reset_process_state()
    hubft.finetune(_config(resumed, checkpoint_every=1, resume="latest"), dataset=shapes)
    assert _sha(straight / "model.safetensors") == _sha(resumed / "model.safetensors")
    assert _history(straight) == _history(resumed)


@pytest.mark.slow
def test_a_plain_vit_learns_masks(tmp_path, shapes):
    out = tmp_path / "vit"
    cfg = _config(out, "test_vit", epochs=4)
    cfg["optim"]["lr"] = 0.003
    hubft.finetune(cfg, dataset=shapes)
    ious = _history(out)
    assert ious[-1] > ious[0], ious
    model = hubft.from_pretrained(f"local-dir:{out}").eval()
    assert model.feature_indices and model.decoder.scales == (4.0, 2.0, 1.0, 0.5)  # a pyramid from one stride


def _cropped(dataset: datasets.Dataset, width: int, height: int) -> datasets.Dataset:
    return dataset.map(lambda row: {k: row[k].crop((0, 0, width, height)) for k in ("image", "mask")})


def test_evaluation_scores_each_mask_at_its_own_resolution(tmp_path, shapes):
    """Eval masks of three sizes (none the model's 32 px input, two in one batch) are scored at their own size:
    the confusion matrix counts every non-ignored pixel of every mask, and equals an independent computation
    (each image resized to the input, its logits upsampled to its mask, scikit-learn's confusion matrix)."""
    from sklearn.metrics import confusion_matrix
    from torchvision.transforms import v2

    evaluation = datasets.concatenate_datasets([
        _cropped(make_synthetic_segmentation_dataset(2, 48, seed=2), 48, 40),
        _cropped(make_synthetic_segmentation_dataset(1, 40, seed=3), 24, 40),
        make_synthetic_segmentation_dataset(2, 16, seed=4)])
    out = tmp_path / "run"
    hubft.finetune(_config(out, epochs=1, eval_batch_size=3),
                   dataset=datasets.DatasetDict({"train": shapes["train"], "validation": evaluation}))
    counted = torch.tensor(json.loads((out / "metrics.json").read_text())["final"]["confusion_matrix"])

    model = hubft.from_pretrained(f"local-dir:{out}").eval()
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    truth, predicted = [], []
    for row in evaluation:
        mask = torch.from_numpy(np.asarray(row["mask"], dtype=np.int64))
        pixels = v2.functional.resize(v2.functional.pil_to_tensor(row["image"]), [32, 32], antialias=True)
        x = (pixels.float() / 255 - mean.view(3, 1, 1)) / std.view(3, 1, 1)
        with torch.no_grad():
            logits = torch.nn.functional.interpolate(model(x[None]), size=tuple(mask.shape), mode="bilinear")
        keep = mask != 255
        truth.append(mask[keep])
        predicted.append(logits.argmax(1)[0][keep])
    assert counted.sum() == sum(int(t.numel()) for t in truth) != 5 * 32 * 32
    expected = confusion_matrix(torch.cat(truth), torch.cat(predicted), labels=range(len(SHAPE_CLASSES)))
    assert (counted.numpy() == expected).all()


def test_ignored_pixels_carry_no_gradient():
    from hubft.losses import create_loss, with_default_options

    spec, options = with_default_options({"cross_entropy": 1.0, "dice": 1.0, "focal": 0.5}, {},
                                         {"ignore_index": 255})
    loss = create_loss(spec, **options)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    target = torch.randint(4, (2, 8, 8))
    target[:, :3] = 255
    loss(logits, target).backward()
    assert logits.grad[:, :, :3].abs().max() == 0
    assert logits.grad[:, :, 3:].abs().max() > 0


@pytest.mark.slow
def test_two_processes_train_a_segmentation_model(tmp_path, free_port):
    data = write_segmentation_folder(tmp_path / "shapes", train=8, validation=4)
    out = tmp_path / "run"
    cfg = _config(out, epochs=1, batch_size=4)
    cfg["data"] = {"path": str(data), "image_size": 32}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port",
                           str(free_port()), "recipes/finetune.py", "--config", str(tmp_path / "config.yaml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["processes"] == 2
    # The confusion matrices gathered from both processes count every eval pixel once (none is ignored twice).
    masks = hubft.data.load_segmentation_data(path=str(data)).eval
    counted = sum(sum(row) for row in metrics["final"]["confusion_matrix"])
    assert counted == sum(int((np.asarray(m) != 255).sum()) for m in masks["mask"])


@pytest.mark.slow
def test_an_adapter_run_loads_back_from_its_directory_and_the_hub_and_merges(hub, api, repo_id, tmp_path, shapes,
                                                                           send_hf_token):
    from huggingface_hub import ModelCard

    from hubft.cli import main
    from hubft.inference import predict_masks
    from hubft.models import SegmentationModel, adapter_base, create_segmentation_model, is_adapter_model

    send_hf_token(hub.token)
    source = tmp_path / "backbone"  # the "pretrained" classifier the segmentation model starts from, on the Hub
    hubft.save_pretrained(hubft.create_model("resnet10t", label_names=["x", "y"], pretrained=False), source)
    api.create_repo(f"{repo_id}-base")
    api.upload_folder(folder_path=str(source), repo_id=f"{repo_id}-base")
    out = tmp_path / "run"
    cfg = _config(out, f"hf-hub:{repo_id}-base", epochs=1, batch_size=8)  # two updates
    cfg["model"].update(pretrained=True, adapter="lora", adapter_options={"r": 4})
    cfg["hub"] = {"push": True, "repo_id": repo_id}
    ft = hubft.Finetuner(cfg, dataset=shapes)
    try:
        ft.setup()
        ft.fit()
        ft.save()
        ft.push()
    finally:
        ft.close()
        reset_process_state()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fmt = torch.channels_last if ft.parts.channels_last else torch.contiguous_format  # the run's memory format

    def logits(model: torch.nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return model.to(memory_format=fmt).eval()(x.contiguous(memory_format=fmt))

    trained = logits(ft.parts.unwrapped_model)
    for load, where in ((hubft.from_pretrained, f"local-dir:{out}"), (hubft.from_pretrained, f"hf-hub:{repo_id}"),
                        (create_segmentation_model, f"hf-hub:{repo_id}")):
        loaded = load(where)
        assert is_adapter_model(loaded) and isinstance(adapter_base(loaded), SegmentationModel)
        assert torch.equal(logits(loaded), trained), where
    image = shapes["validation"][0]["image"]
    masks = [predict_masks(model, [image])[0] for model in (f"hf-hub:{repo_id}", ft.parts.unwrapped_model)]
    assert torch.equal(*masks)
    card = ModelCard.load(repo_id)  # no timm + peft snippet: timm alone does not build the decoder
    assert "PeftModel.from_pretrained(base" not in card.text and f'from_pretrained("hf-hub:{repo_id}")' in card.text

    assert main(["merge", repo_id, str(tmp_path / "merged")]) == 0
    merged = hubft.from_pretrained(f"local-dir:{tmp_path / 'merged'}")
    assert isinstance(merged, SegmentationModel) and merged.label_names == list(SHAPE_CLASSES)
    # Folding the adapter into fp32 weights reorders sums: logits of size ~1 move by about 1e-7.
    torch.testing.assert_close(logits(merged), trained, atol=1e-5, rtol=0)
