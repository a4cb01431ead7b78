"""``hubft eval``: a trained model's metrics on a dataset, written, printed and optionally pushed to its card."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubft.errors import ConfigError, DataError, HubError
from hubft.files import atomic_write_text, make_dir
from hubft.inference._model import InferenceModel, load_inference_model
from hubft.inference._tta import parse_tta, run_with_tta
from hubft.tasks import Task

__all__ = ["EvalReport", "evaluate_model", "push_eval_results"]


@dataclass(frozen=True)
class EvalReport:
    """What :func:`evaluate_model` measured.

    Attributes:
        metrics: The task's metrics (for classification: accuracy, top5, f1_macro, per_class_accuracy,
            confusion_matrix, num_samples; multi-label: map, f1_micro, f1_macro, per_class_ap).
        predictions: The predicted label index of every row, in the split's order (single-label; empty for a
            per-pixel task).
        dataset: Where the rows came from (a :class:`~hubft.data.DataSource` as a dict).
        model: The model's name.
        tta: The test-time augmentations used.
        task: The model's task, as it applies to its labels.
    """

    metrics: dict
    predictions: list[int]
    dataset: dict
    model: str
    tta: tuple[str, ...]
    task: Task


def evaluate_model(
    model: str | os.PathLike | InferenceModel,
    *,
    name: str | None = None,
    path: str | os.PathLike | None = None,
    dataset: Any = None,
    split: str | None = None,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    classes: list | None = None,
    batch_size: int = 64,
    tta: str | tuple[str, ...] | None = None,
    output_dir: str | os.PathLike | None = None,
) -> EvalReport:
    """Evaluate a trained model on one split of a dataset, with its own preprocessing (as in training).

    The dataset's labels are matched to the model's by name, so a split holding only some of the model's classes,
    in any order, is fine; ``classes`` (names, or indices into the dataset's label names) keeps only the rows of
    those classes, e.g. the ones the model was trained for. With ``output_dir``, writes ``metrics.json`` and
    (single-label) ``confusion_matrix.png``.

    A semantic-segmentation model is scored on image / mask pairs (``label_column`` names the mask column, found
    as in training otherwise; mask values are the model's class ids, 255 ignored) at each mask's own resolution,
    with the metrics of its training run (mean IoU, per-class IoU, mean Dice, pixel accuracy); ``tta`` and
    ``classes`` do not apply to it.

    Raises:
        ConfigError: ``tta`` or ``classes`` for a segmentation model.
        DataError: The data has no label column, holds a label the model does not know, or has several labels per
            image for a model that predicts one (or the other way round); as :func:`hubft.data.load_split`. For a
            segmentation model: no mask column, a mask of another size than its image or with a class id outside
            the model's labels.
        ModelError: The model cannot be loaded.
    """
    from hubft.data import load_split

    modes = parse_tta(tta)
    loaded = model if isinstance(model, InferenceModel) else load_inference_model(model)
    if loaded.task.eval_statistics is not None:
        if modes or classes is not None:
            raise ConfigError(f"{'--tta' if modes else '--data.classes'} does not apply to a {loaded.task.name} "
                              "model", fix=f"leave {'--tta' if modes else '--data.classes'} out")
        report = _evaluate_dense(loaded, dict(name=name, path=path, dataset=dataset, split=split, revision=revision,
                                              image_column=image_column, mask_column=label_column), batch_size)
        if output_dir is not None:
            _write(report, loaded, Path(make_dir(output_dir, key="the eval output directory")))
        return report
    split_data = load_split(name=name, path=path, dataset=dataset, split=split, revision=revision,
                            image_column=image_column, label_column=label_column)
    if classes is not None:
        split_data = _keep_classes(split_data, classes)
    targets = _targets(loaded, split_data)
    logits = _logits(loaded, split_data, batch_size, modes)
    metrics = loaded.task.compute_metrics(logits, targets, list(loaded.label_names))
    report = EvalReport(metrics, logits.argmax(1).tolist(), split_data.source.to_dict(), loaded.spec, modes,
                        loaded.task)
    if output_dir is not None:
        _write(report, loaded, Path(make_dir(output_dir, key="the eval output directory")))
    return report


@torch.no_grad()
def _evaluate_dense(loaded: InferenceModel, source: dict, batch_size: int) -> EvalReport:
    """A per-pixel task's metrics, as its training run's evaluation computes them: each image resized to the
    model's input, its logits brought to its mask's own size, one confusion matrix per image, summed."""
    from hubft.data import SegmentationDataset, SegmentationTransform, load_segmentation_split

    names = list(loaded.label_names)
    split = load_segmentation_split(label_names=names, **source)
    task = loaded.task
    transform = SegmentationTransform.for_model(loaded.model.pretrained_cfg)
    items = SegmentationDataset(split.data, transform, split.image_column, split.label_column, len(names),
                                split=split.source.eval_split)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, collate_fn=task.eval_collate)
    device = next(loaded.model.parameters()).device
    statistics = []
    for x, y in _progress(loader, "eval"):
        out, y = task.eval_outputs(loaded.model(transform.normalize(x.to(device))).float(), y.to(device))
        statistics.append(task.eval_statistics(out, y, len(names)).cpu())
    metrics = task.compute_metrics(torch.cat(statistics), None, names)
    metrics["num_samples"] = len(items)
    return EvalReport(metrics, [], split.source.to_dict(), loaded.spec, (), task)


def _targets(loaded: InferenceModel, split) -> torch.Tensor:
    """The split's labels as indices into the model's labels (multi-hot rows for multi-label data)."""
    if split.multi_label != (loaded.task.activation == "sigmoid"):
        what = "several labels per image" if split.multi_label else "one label per image"
        raise DataError(f"the data has {what}, but model {loaded.spec!r} was fine-tuned for "
                        f"{'one label' if split.multi_label else 'several labels'} per image",
                        fix="evaluate it on data labelled the way it was trained")
    position = {name: i for i, name in enumerate(loaded.label_names)}
    column = split.data[split.label_column]
    # Only labels that some row carries must be the model's: --data.classes keeps rows, not the label names.
    present = set(label for labels in column for label in labels) if split.multi_label else set(column)
    unknown = [n for i, n in enumerate(split.label_names) if i in present and n not in position]
    if unknown:
        raise DataError(f"the data has labels model {loaded.spec!r} does not know: {unknown[:5]}"
                        + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""),
                        fix=f"evaluate on data labelled with the model's labels: {list(loaded.label_names)[:10]}")
    remap = torch.tensor([position.get(n, -1) for n in split.label_names], dtype=torch.long)
    if not split.multi_label:
        return remap[torch.tensor(column, dtype=torch.long)]
    rows = torch.zeros(len(column), len(loaded.label_names))
    for i, labels in enumerate(column):
        rows[i, remap[torch.tensor(labels, dtype=torch.long)]] = 1.0
    return rows


def _keep_classes(split, classes: list):
    """The split with only the rows whose label is one of ``classes`` (its label names are kept as they are)."""
    import dataclasses

    names = split.label_names
    wanted = set()
    for c in classes:
        if isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names) and str(c) not in names:
            wanted.add(names[c])
        elif str(c) in names:
            wanted.add(str(c))
        else:
            raise DataError(f"unknown class {c!r} in --data.classes; the data's classes are {names[:10]}",
                            fix="name classes the data has")
    keep = {names.index(n) for n in wanted}
    column = split.data[split.label_column]
    rows = [i for i, label in enumerate(column) if (set(label) & keep if split.multi_label else label in keep)]
    if not rows:
        raise DataError(f"no row of the split has one of the classes {sorted(wanted)}", fix="check --data.classes")
    return dataclasses.replace(split, data=split.data.select(rows))


@torch.no_grad()
def _logits(loaded: InferenceModel, split, batch_size: int, modes: tuple[str, ...]) -> torch.Tensor:
    from hubft.data import ImageClassificationDataset

    items = ImageClassificationDataset(split.data, loaded.transform, image_column=split.image_column,
                                       label_column=split.label_column, multi_label=split.multi_label,
                                       num_classes=len(split.label_names), split=split.source.eval_split)
    loader = torch.utils.data.DataLoader(items, batch_size=batch_size)
    outputs = [run_with_tta(loaded.model, x, modes, fixed_input_size=loaded.fixed_input_size).float()
               for x, _ in _progress(loader, "eval")]
    return torch.cat(outputs) if outputs else torch.zeros(0, len(loaded.label_names))


def _progress(loader, what: str):
    from tqdm.auto import tqdm

    return tqdm(loader, desc=what, unit="batch", leave=False, dynamic_ncols=True)


def _write(report: EvalReport, loaded: InferenceModel, out: Path) -> None:
    from hubft.tasks.plots import plot_confusion_matrix

    summary = {"model": report.model, "task": loaded.task.name, "dataset": report.dataset,
               "tta": list(report.tta), "metrics": report.metrics}
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=1))
    matrix = report.metrics.get("confusion_matrix")
    if matrix:
        plot_confusion_matrix(matrix, list(loaded.label_names), out / "confusion_matrix.png",
                              title=f"confusion matrix ({report.dataset.get('eval_split')})")


def push_eval_results(report: EvalReport, repo_id: str, *, create_pr: bool = False,
                      token: str | bool | None = None) -> str:
    """Add the report's results to the ``model-index`` of ``repo_id``'s card, keeping its other entries.

    A result replaces the card's one of the same task, dataset, split and metric (and metric arguments); every other
    entry is kept. The card is committed to the repo, or opened as a pull request with ``create_pr`` or when the
    token may not write to the repo.

    Returns:
        The commit or pull request URL.

    Raises:
        HubError: The card cannot be read or pushed (the repo is missing, the Hub is down, no token may open a pull
            request either).
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import HfHubHTTPError

    from hubft.hub.card import eval_results_for

    new = eval_results_for(report.task, report.dataset, report.metrics)
    try:
        card = ModelCard.load(repo_id, token=token)
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"cannot read the model card of {repo_id!r} ({type(e).__name__})",
                       fix="check the repo id, HF_ENDPOINT and HF_TOKEN") from None
    replaced = {_key(r) for r in new}
    card.data.eval_results = [r for r in card.data.eval_results or [] if _key(r) not in replaced] + new
    card.data.model_name = card.data.model_name or repo_id.split("/")[-1]
    message = f"Evaluation results on {new[0].dataset_name} ({new[0].dataset_split}) with hubft" if new else \
        "Evaluation results with hubft"
    try:
        return str(card.push_to_hub(repo_id, token=token, commit_message=message, create_pr=create_pr))
    except HfHubHTTPError as e:
        if create_pr or _status(e) not in (401, 403):
            raise _push_error(repo_id, e) from None
    try:  # the token may not write to the repo: propose the change instead
        return str(card.push_to_hub(repo_id, token=token, commit_message=message, create_pr=True))
    except HfHubHTTPError as e:
        raise _push_error(repo_id, e) from None


def _status(error: Exception) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def _push_error(repo_id: str, error: Exception) -> HubError:
    return HubError(f"pushing the evaluation results to {repo_id!r} failed (HTTP {_status(error)})",
                    fix="check HF_TOKEN: it must be able to write to the repo or open a pull request")


def _key(result) -> tuple:
    return (result.task_type, result.dataset_type, result.dataset_split, result.metric_type,
            repr(sorted((result.metric_args or {}).items())))
