"""``hubft export``: a trained model as ONNX, with its preprocessing and labels inside, checked against torch."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hubft.errors import ConfigError, ModelError
from hubft.files import make_dir
from hubft.inference._model import InferenceModel, load_inference_model

__all__ = ["ExportReport", "export_onnx", "ONNX_TOLERANCE"]

ONNX_TOLERANCE = 1e-4
"""The largest difference from torch's outputs an export may show on random inputs (batches of 1 and 5)."""

_PREPROCESSING = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class ExportReport:
    """An export and its check: the file and the largest difference from torch at each batch size tried."""

    path: Path
    max_abs_diff: dict[int, float]


def export_onnx(model: str | os.PathLike | InferenceModel, output: str | os.PathLike, *,
                opset: int | None = None) -> ExportReport:
    """Export a trained model to ONNX with a dynamic batch size, then check it with onnxruntime.

    The file's metadata holds ``hubft.preprocessing`` (input size, interpolation, mean, std, crop, as JSON),
    ``hubft.label_names`` (JSON) and ``hubft.task``. The input is ``pixel_values`` (``[batch, 3, H, W]``,
    normalised), the output ``logits``. The exported model is run on random inputs of batch 1 and 5 and compared
    with torch; the file is put in place only when every difference is at most :data:`ONNX_TOLERANCE`.

    Raises:
        ConfigError: onnx / onnxruntime are not installed.
        ModelError: The model cannot be exported, or its export differs from torch by more than the tolerance.
    """
    onnx, ort = _onnx_packages()
    loaded = model if isinstance(model, InferenceModel) else load_inference_model(model)
    out = Path(output)
    make_dir(out.resolve().parent, key="the folder of --output")
    size = tuple(loaded.model.pretrained_cfg["input_size"])
    with tempfile.TemporaryDirectory(dir=out.resolve().parent, prefix=".hubft-export-") as tmp:
        staged = Path(tmp) / out.name
        _export(loaded.model, staged, size, opset)
        proto = onnx.load(str(staged))
        metadata = {"hubft.preprocessing": json.dumps({k: loaded.model.pretrained_cfg.get(k) for k in _PREPROCESSING}),
                    "hubft.label_names": json.dumps(list(loaded.label_names)), "hubft.task": loaded.task.name}
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(staged))
        diffs = _check(loaded.model, ort, staged, size)
        worst = max(diffs.values())
        if worst > ONNX_TOLERANCE:
            raise ModelError(f"the ONNX export of {loaded.spec!r} differs from torch by {worst:.3g} (tolerance "
                             f"{ONNX_TOLERANCE:g}); nothing was written", fix="try another --opset, or report it")
        os.replace(staged, out)
    return ExportReport(out, diffs)


def _onnx_packages():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise ConfigError("hubft export --format onnx needs the onnx and onnxruntime packages",
                          fix="pip install 'hubft[onnx]'") from None
    return onnx, onnxruntime


def _export(model: torch.nn.Module, path: Path, size: tuple[int, ...], opset: int | None) -> None:
    example = torch.randn(2, *size)
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=opset,
                          external_data=False)
    except Exception as e:  # the exporter's failures are many and deep; name the model and the cause
        from hubft.errors import one_line

        raise ModelError(f"torch could not export the model to ONNX ({type(e).__name__}: {one_line(e)})",
                         fix="try another --opset, or a model without custom operators") from None


def _check(model: torch.nn.Module, ort, path: Path, size: tuple[int, ...]) -> dict[int, float]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    diffs = {}
    for batch in (1, 5):
        x = torch.randn(batch, *size, generator=generator)
        with torch.no_grad():
            expected = model(x).float().numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        diffs[batch] = float(abs(got - expected).max())
    return diffs
