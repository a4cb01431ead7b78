"""Plots of a task's evaluation that a run and ``hubft eval`` both draw (matplotlib, an optional extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_confusion_matrix", "plot_segmentation_sample", "pyplot"]


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None (with one message) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("hubft: matplotlib is not installed (pip install 'hubft[plots]'); skipping plots", flush=True)
        return None
    return plt


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: str | Path,
                          title: str = "confusion matrix (eval)") -> Path | None:
    """Draw a confusion matrix (rows: true labels, columns: predictions) with its counts; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1 + 0.45 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), label_names, rotation=90)
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_segmentation_sample(model, dataset, normalize, label_names: Sequence[str], path: str | Path) -> Path | None:
    """Write the first item of ``dataset`` as three panels: the image, its mask and the model's prediction, each
    class in its own colour over the image (ignored pixels black). None when the dataset is empty.

    ``dataset`` yields ``(uint8 image [3, H, W], mask [H, W])``; ``normalize`` turns a uint8 batch into the model's
    input. Drawn with PIL (no matplotlib needed), upscaled to at least 192 px per panel.
    """
    import numpy as np
    import torch
    from PIL import Image

    if len(dataset) == 0:
        return None
    image, mask = dataset[0]
    # An eval mask keeps its own resolution: drawn over the model's input, it is resized like it (nearest).
    mask = torch.nn.functional.interpolate(mask[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0]
    mask = mask.long()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        predicted = model(normalize(image.unsqueeze(0).to(device))).argmax(1)[0].cpu()
    model.train(was_training)
    import colorsys

    palette = 255 * np.array([colorsys.hsv_to_rgb(i / len(label_names), 0.9, 0.95) for i in range(len(label_names))],
                             dtype=np.float32)
    pixels = image.permute(1, 2, 0).numpy().astype(np.float32)

    def overlay(classes: np.ndarray) -> np.ndarray:
        out = pixels.copy()
        known = classes < len(palette)
        out[known] = 0.4 * pixels[known] + 0.6 * palette[classes[known]]
        out[~known] = 0
        return out.astype(np.uint8)

    panels = np.concatenate([pixels.astype(np.uint8), overlay(mask.numpy()), overlay(predicted.numpy())], axis=1)
    scale = max(1, 192 // pixels.shape[0])
    picture = Image.fromarray(panels).resize((panels.shape[1] * scale, panels.shape[0] * scale), Image.NEAREST)
    picture.save(path)
    return Path(path)
