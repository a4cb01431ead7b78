"""Plots of a task's evaluation that a run and ``hubft eval`` both draw (matplotlib, an optional extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["plot_confusion_matrix", "pyplot"]


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
