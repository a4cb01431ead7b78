"""Ratio 7: after training. ``hubft predict`` against a plain ``torch.no_grad()`` loop over the same image files,
and ONNX Runtime against torch eager on the same batches.

- predict: both sides read the same JPEG files, decode them with PIL, run the model's own eval transform and a
  batched forward pass, and keep the top-5 labels. The plain side is the loop a user would write (a DataLoader over
  the paths, ``model(x).softmax(-1).topk(5)``); hubft's side is :func:`hubft.inference.predict` (path collection,
  the progress bar, the rows it returns). Target >= 0.95.
- ONNX Runtime vs torch eager: the model exported by ``hubft export`` against the same model in torch, on the same
  normalised batches already in memory: how much a deployment gains on this CPU (context, no target).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench._timing import Row, interleave, quiet, speed_row

CASES = [("resnet18", 128, 32)]  # model, images, batch
QUICK_CASES = [("resnet10t", 32, 16)]


def _model_dir(root: Path, name: str) -> Path:
    import hubft

    model = hubft.create_model(name, label_names=[f"class_{i}" for i in range(10)], pretrained=False,
                               head_init_seed=0)
    return hubft.save_pretrained(model, root / "model")


def _plain(model_dir: Path, files: list[Path], batch: int):
    """The predict loop a user writes by hand: timm loads the model, PIL decodes, timm's transform, no_grad."""
    import timm
    from PIL import Image

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as image:
                return transform(image.convert("RGB"))

    def run() -> list:
        out = []
        with torch.no_grad():
            for x in torch.utils.data.DataLoader(Files(), batch_size=batch):
                probs, labels = model(x).softmax(-1).topk(5)
                out.extend(zip(labels.tolist(), probs.tolist()))
        return out

    return run


def _onnx_sides(model_dir: Path, root: Path, batch: int):
    import onnxruntime as ort

    from hubft.inference import export_onnx, load_inference_model

    loaded = load_inference_model(model_dir)
    with quiet():
        export_onnx(loaded, root / "model.onnx")
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *loaded.model.pretrained_cfg["input_size"])
    array = x.numpy()

    def eager() -> None:
        with torch.no_grad():
            loaded.model(x)

    return {"onnxruntime": lambda: session.run(["logits"], {"pixel_values": array}), "torch": eager}


def run(reps: int, quick: bool, device: torch.device) -> list[Row]:
    from hubft.data import write_image_folder
    from hubft.inference import load_inference_model, predict

    rows = []
    for name, count, batch in QUICK_CASES if quick else CASES:
        print(f"  inference: {name}, {count} images, batch {batch}", flush=True)
        with tempfile.TemporaryDirectory(prefix="hubft-bench-inference-") as tmp:
            root = Path(tmp)
            model_dir = _model_dir(root, name)
            folder = write_image_folder(root / "images", 4, count // 4, 256, seed=0, splits=["test"],
                                        image_format="jpg")
            files = sorted(p for p in folder.rglob("*.jpg"))
            loaded = load_inference_model(model_dir)

            def hubft_predict() -> None:
                with quiet():
                    predict(loaded, [str(folder)], top_k=5, batch_size=batch)

            case = f"{name}, {count} JPEGs of 256 px, batch {batch}"
            times = interleave({"hubft": hubft_predict, "plain": _plain(model_dir, files, batch)}, reps)
            rows.append(speed_row(times, "hubft", "plain", bench="7 inference", case=case, target=0.95,
                                  metric="hubft predict / plain torch.no_grad() loop over the same files"))
            times = interleave(_onnx_sides(model_dir, root, batch), reps)
            rows.append(speed_row(times, "onnxruntime", "torch", bench="7 inference",
                                  case=f"{name}, batch {batch} in memory",
                                  metric="ONNX Runtime / torch eager (context)"))
    return rows
