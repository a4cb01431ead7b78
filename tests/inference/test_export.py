"""``hubft export --format onnx``: a dynamic batch size, the preprocessing and labels in the file, and outputs
equal to torch's within the documented tolerance."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch

from hubft.cli import main
from hubft.errors import ConfigError
from hubft.inference import ONNX_TOLERANCE, export_onnx, load_inference_model


def test_the_export_runs_in_onnxruntime_at_any_batch_size_with_its_metadata(trained, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert main(["export", str(trained), "--format", "onnx", "-o", str(out)]) == 0
    assert "max abs difference batch 1:" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    model = load_inference_model(trained)
    assert json.loads(meta["hubft.label_names"]) == list(model.label_names)
    assert json.loads(meta["hubft.preprocessing"])["input_size"] == list(model.model.pretrained_cfg["input_size"])
    assert meta["hubft.task"] == "image-classification"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 5):  # 3 was never seen by the exporter: the batch axis is dynamic
        x = torch.randn(batch, *model.model.pretrained_cfg["input_size"])
        with torch.no_grad():
            expected = model.model(x).numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() <= ONNX_TOLERANCE


def test_the_report_names_each_batch_sizes_difference(trained, tmp_path):
    report = export_onnx(trained, tmp_path / "m.onnx")
    assert set(report.max_abs_diff) == {1, 5} and max(report.max_abs_diff.values()) <= ONNX_TOLERANCE
    assert report.path.is_file() and not list(tmp_path.glob(".hubft-export-*"))


def test_without_onnx_installed_the_error_says_what_to_install(trained, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ConfigError, match=r"pip install 'hubft\[onnx\]'"):
        export_onnx(trained, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
