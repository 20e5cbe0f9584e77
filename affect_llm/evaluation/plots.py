"""PNG figures for the evaluation report (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# PNG metadata without software version or date, so reruns write the same bytes where possible.
_PNG_METADATA = {"Software": None}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: Mapping[str, Any], path: Path) -> Path:
    """Heat map of a :func:`~affect_llm.evaluation.metrics.confusion_matrix` result."""
    plt = _pyplot()
    rows, cols, matrix = confusion["rows"], confusion["columns"], confusion["matrix"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(cols), 1.0 + 0.6 * len(rows)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(cols)), labels=cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted family (first label)")
    ax.set_ylabel("reference family")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def plot_per_class(per_class: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped bars of precision, recall and F1 per reference class."""
    plt = _pyplot()
    classes = list(per_class)
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * max(1, len(classes)), 3.5))
    width = 0.27
    for k, key in enumerate(("precision", "recall", "f1")):
        xs = [i + (k - 1) * width for i in range(len(classes))]
        ax.bar(xs, [per_class[c][key] for c in classes], width=width, label=key)
    ax.set_xticks(range(len(classes)), labels=classes, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def plot_judge_histogram(scores: Mapping[str, Sequence[float]], path: Path) -> Path:
    """Histogram of judge scores (1-10) per kind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = [0.5 + i for i in range(11)]
    for kind, values in scores.items():
        if values:
            ax.hist(list(values), bins=bins, alpha=0.6, label=kind)
    ax.set_xlabel("judge score")
    ax.set_ylabel("samples")
    ax.set_xlim(0.5, 10.5)
    if any(scores.values()):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)
    plt.close(fig)
    return path
