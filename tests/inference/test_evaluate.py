"""``hubft eval``: the task's metrics of a trained model on a dataset, checked against scikit-learn, written out,
and the same predictions ``hubft predict`` gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

import hubft
from hubft.errors import DataError
from hubft.inference import evaluate_model, load_inference_model, predict
from hubft.inference._tta import run_with_tta


def _reference_logits(run, dataset) -> torch.Tensor:
    """The model's logits on every row, computed here from timm's own loader and transform."""
    import timm

    model = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        return torch.cat([model(transform(row["image"].convert("RGB")).unsqueeze(0)) for row in dataset])


def test_eval_metrics_equal_scikit_learns_on_the_same_predictions(trained, eval_data, tmp_path):
    report = evaluate_model(trained, dataset=eval_data, output_dir=tmp_path)
    y = np.array(eval_data["label"])
    pred = _reference_logits(trained, eval_data).argmax(1).numpy()
    assert report.predictions == pred.tolist()
    m = report.metrics
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, labels=sorted(set(y)), average="macro",
                                                   zero_division=0), abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y, pred, labels=range(4)).tolist()
    assert sum(map(sum, m["confusion_matrix"])) == m["num_samples"] == len(eval_data)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"]["accuracy"] == m["accuracy"] and written["task"] == "image-classification"
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_labels_are_matched_by_name_whatever_the_datasets_order(trained, eval_data):
    import datasets

    names = eval_data.features["label"].names
    reordered = list(reversed(names))[:3]  # three of the four classes, in another order
    keep = eval_data.filter(lambda row: names[row["label"]] in reordered)
    relabelled = keep.cast_column("label", datasets.Value("int64")).map(
        lambda row: {"label": reordered.index(names[row["label"]])})
    relabelled = relabelled.cast_column("label", datasets.ClassLabel(names=reordered))
    report = evaluate_model(trained, dataset=relabelled)
    full = evaluate_model(trained, dataset=keep)
    assert report.metrics["confusion_matrix"] == full.metrics["confusion_matrix"]
    assert report.metrics["per_class_accuracy"] == full.metrics["per_class_accuracy"]
    assert report.metrics["per_class_accuracy"][names[0]] is None  # absent from the data


def test_classes_keeps_the_rows_the_model_knows_in_data_with_more_labels(trained, eval_data):
    """As the demo does: a model of some labels, evaluated on a dataset with others too, through ``classes``."""
    import datasets

    names = eval_data.features["label"].names
    wider = eval_data.cast_column("label", datasets.ClassLabel(names=[*names, "other"]))
    other = wider.cast_column("label", datasets.Value("int64")).map(lambda row, i: {"label": len(names)}
                                                                    if i % 2 else {}, with_indices=True)
    other = other.cast_column("label", datasets.ClassLabel(names=[*names, "other"]))
    with pytest.raises(DataError, match=r"does not know: \['other'\]"):
        evaluate_model(trained, dataset=other)
    report = evaluate_model(trained, dataset=other, classes=names)
    assert report.metrics["num_samples"] == len(eval_data) // 2
    assert report.metrics["confusion_matrix"] == evaluate_model(trained, dataset=wider.select(
        range(0, len(wider), 2))).metrics["confusion_matrix"]
    # Labels no row carries are not the model's business either.
    assert evaluate_model(trained, dataset=wider).metrics["num_samples"] == len(eval_data)


def test_predict_gives_evals_predictions_with_probabilities_that_sum_to_one(trained, eval_data, tmp_path):
    from hubft.data import write_image_folder

    folder = write_image_folder(tmp_path / "images", num_classes=4, per_class=3, size=16)
    rows = predict(trained, [str(folder)], top_k=4)
    report = evaluate_model(trained, path=folder)
    model = load_inference_model(trained)
    assert [r["labels"][0] for r in rows] == [model.label_names[i] for i in report.predictions]
    for r in rows:
        assert sum(r["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert r["probabilities"] == sorted(r["probabilities"], reverse=True) and len(r["labels"]) == 4
    assert rows[0]["path"].endswith("class_0/0.png")
    split_rows = predict(trained, path=folder, top_k=1)
    assert [r["labels"] for r in split_rows] == [r["labels"][:1] for r in rows]


def test_hflip_tta_averages_the_logits_of_the_image_and_its_mirror_and_multiscale_needs_a_flexible_model():
    from hubft.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        got = run_with_tta(model, x, ("hflip",))
        assert torch.allclose(got, (model(x) + model(x.flip(-1))) / 2)
        assert run_with_tta(model, x, ("hflip", "multiscale")).shape == (2, 2)
    with pytest.raises(ConfigError, match="fixed_input_size"):
        run_with_tta(model, x, ("multiscale",), fixed_input_size=True)
    with pytest.raises(ConfigError, match="unknown test-time augmentation 'vflip'"):
        evaluate_model("no-model-is-loaded-before-the-check", tta="vflip")


def test_tta_changes_the_eval(trained, eval_data):
    plain = evaluate_model(trained, dataset=eval_data)
    flipped = evaluate_model(trained, dataset=eval_data, tta="hflip")
    assert flipped.tta == ("hflip",) and plain.tta == ()
    assert flipped.metrics["num_samples"] == plain.metrics["num_samples"]


def test_multi_label_models_are_evaluated_with_multi_label_metrics(tmp_path):
    from hubft.data import make_synthetic_image_dataset
    from hubft.testing import reset_process_state

    data = make_synthetic_image_dataset(num_classes=3, per_class=8, size=16, multi_label=True)
    out = tmp_path / "run"
    try:
        hubft.finetune({"model": {"name": "resnet10t", "pretrained": False},
                        "data": {"image_size": 32, "eval_fraction": 0.25},
                        "train": {"epochs": 1, "batch_size": 8, "output_dir": str(out), "cpu": True}}, dataset=data)
    finally:
        reset_process_state()
    report = evaluate_model(out, dataset=data)
    assert {"map", "f1_micro", "f1_macro", "per_class_ap"} <= set(report.metrics)
    with pytest.raises(DataError, match="one label per image"):
        evaluate_model(out, dataset=make_synthetic_image_dataset(num_classes=3, per_class=4, size=16))


@pytest.mark.parametrize(("make", "match"), [
    (lambda d: d.rename_column("label", "species").cast_column("species", __import__("datasets").Value("string")),
     "label column"),
    (lambda d: d.cast_column("label", __import__("datasets").ClassLabel(names=["w", "x", "y", "z"])),
     "labels model .* does not know"),
])
def test_bad_data_for_eval_is_a_one_line_data_error(trained, eval_data, make, match):
    data = make(eval_data)
    if "species" in data.column_names:
        data = data.remove_columns("species")
    with pytest.raises(DataError, match=match):
        evaluate_model(trained, dataset=data)
