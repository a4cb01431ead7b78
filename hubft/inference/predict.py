"""``hubft predict``: a trained model's top labels for image files, folders, globs or a dataset split."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from hubft.errors import ConfigError
from hubft.files import atomic_write_text, make_dir
from hubft.inference._images import ImageFiles, collect_images
from hubft.inference._model import InferenceModel, load_inference_model
from hubft.inference._tta import parse_tta, run_with_tta

__all__ = ["predict", "write_predictions"]


def predict(
    model: str | os.PathLike | InferenceModel,
    inputs: Sequence[str | os.PathLike] = (),
    *,
    name: str | None = None,
    path: str | os.PathLike | None = None,
    split: str | None = None,
    top_k: int = 5,
    batch_size: int = 64,
    tta: str | tuple[str, ...] | None = None,
) -> list[dict]:
    """The model's ``top_k`` labels and probabilities for every image, in input order.

    Images are the files, folders (searched recursively) and glob patterns in ``inputs``, or the rows of a dataset
    split (``name`` / ``path`` and ``split``, as :func:`hubft.data.load_split` reads them). Each goes through the
    model's own eval preprocessing, exactly as in :func:`~hubft.inference.evaluate_model`. Probabilities are the
    task's (softmax over the labels, or a sigmoid per label for a multi-label model).

    Returns:
        One row per image: ``path`` (files; the dataset's path or row number otherwise), ``labels`` and
        ``probabilities`` (best first).

    Raises:
        ConfigError: Both or neither of ``inputs`` and a dataset are given, or ``top_k`` < 1.
        DataError: An input names nothing, or an image does not decode (the file is named).
    """
    modes = parse_tta(tta)
    if bool(inputs) == (name is not None or path is not None):
        raise ConfigError("give images (files, folders, globs) or a dataset (--data.name / --data.path), not both "
                          "and not neither", fix="e.g. hubft predict MODEL photos/ or --data.path images/")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k {top_k!r} is not a number >= 1", fix="e.g. --top-k 5")
    loaded = model if isinstance(model, InferenceModel) else load_inference_model(model)
    loaded.check_per_image("predict")
    items, names = _items(loaded, inputs, name, path, split)
    k = min(top_k, len(loaded.label_names))
    rows = []
    with torch.no_grad():
        for x, index in _batches(items, batch_size):
            probs = loaded.task.probabilities(run_with_tta(loaded.model, x, modes,
                                                           fixed_input_size=loaded.fixed_input_size).float())
            top = probs.sort(dim=1, descending=True, stable=True)
            for i, scores, labels in zip(index.tolist(), top.values[:, :k].tolist(), top.indices[:, :k].tolist()):
                rows.append({"path": names[i], "labels": [loaded.label_names[j] for j in labels],
                             "probabilities": scores})
    return rows


def _items(loaded: InferenceModel, inputs, name, path, split) -> tuple[Any, list[str]]:
    if inputs:
        files = collect_images(inputs)
        return ImageFiles(files, loaded.transform), [str(f) for f in files]
    from hubft.data import load_split

    data = load_split(name=name, path=path, split=split, labels=False)
    names = _row_names(data)
    return _DatasetImages(data, loaded.transform), names


def _row_names(data) -> list[str]:
    """Each row's file path where the dataset keeps it, else ``<split>[<row>]``."""
    column = data.data.cast_column(data.image_column, type(data.data.features[data.image_column])(decode=False))
    out = []
    for i, value in enumerate(column[data.image_column]):
        where = value.get("path") if isinstance(value, dict) else None
        out.append(where or f"{data.source.eval_split}[{i}]")
    return out


class _DatasetImages(torch.utils.data.Dataset):
    def __init__(self, data, transform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.data.data[index][self.data.image_column]), index


def _batches(items, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(items, batch_size=batch_size)
    yield from tqdm(loader, desc="predict", unit="batch", leave=False, dynamic_ncols=True)


def write_predictions(rows: list[dict], output: str | os.PathLike | None, *, check_only: bool = False) -> str | None:
    """Write the rows as JSON lines (``.jsonl``, or stdout when ``output`` is None) or CSV (``.csv``: ``path``,
    then ``label_i``, ``probability_i`` for i = 1..k).

    Returns:
        The text, when ``output`` is None (for the caller to print).

    Raises:
        ConfigError: ``output`` ends in neither ``.jsonl`` nor ``.csv`` (``check_only``: only this is checked).
    """
    suffix = Path(output).suffix.lower() if output is not None else ".jsonl"
    if suffix not in (".jsonl", ".csv"):
        raise ConfigError(f"predictions go to a .jsonl or .csv file, not {str(output)!r}",
                          fix="e.g. -o predictions.jsonl or -o predictions.csv")
    if check_only:
        return None
    if suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    elif suffix == ".csv":
        k = max((len(r["labels"]) for r in rows), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", *(f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "probability"))])
        for r in rows:
            writer.writerow([r["path"], *(v for pair in zip(r["labels"], r["probabilities"]) for v in pair)])
        text = buffer.getvalue()
    if output is None:
        return text
    make_dir(Path(output).resolve().parent, key="the folder of --output")
    atomic_write_text(output, text)
    return None
