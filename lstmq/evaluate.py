"""One evaluator for every path (float, QAT, PTQ, integer): metrics, tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from lstmq.io import atomic_write_bytes

CLASS_NAMES = tuple(str(d) for d in range(10))


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           num_classes: int = 10) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    classes = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    return {
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else float("nan"),
        "count": int(len(labels)),
        "per_class": {
            str(c): {"precision": float(precision[c]), "recall": float(recall[c]),
                     "f1": float(f1[c]), "support": int(support[c])}
            for c in classes
        },
        "confusion": confusion_matrix(labels, predictions, labels=classes).tolist(),
    }


def per_group_accuracy(labels: np.ndarray, predictions: np.ndarray,
                       groups: np.ndarray) -> dict[str, float]:
    """Accuracy within each group (e.g. speaker)."""
    return {str(g): float(np.mean(predictions[groups == g] == labels[groups == g]))
            for g in sorted(set(groups.tolist()))}


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, std, min and max over seeds."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Per-class precision/recall/F1 table, then accuracy."""
    lines = [f"{'class':>5} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:>5} {row['precision']:9.4f} {row['recall']:7.4f} "
                     f"{row['f1']:6.4f} {row['support']:7d}")
    if "accuracy" in metrics:
        lines.append(f"accuracy {metrics['accuracy'] * 100:.2f}% of {metrics['count']} clips")
    return "\n".join(lines)


def _save_figure(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion: Sequence[Sequence[int]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(matrix)), CLASS_NAMES[:len(matrix)])
    ax.set_yticks(range(len(matrix)), CLASS_NAMES[:len(matrix)])
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    _save_figure(fig, path)
    plt.close(fig)


def plot_history(history: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Training loss and train/validation accuracy per epoch (mean and range over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax, label in (("train_loss", loss_ax, "train loss"),
                           ("train_accuracy", acc_ax, "train"),
                           ("val_accuracy", acc_ax, "validation")):
        if not history or key not in history[0]:
            continue
        values = np.asarray([row[key] for row in history], np.float64).reshape(len(history), -1)
        ax.plot(epochs, values.mean(1), label=label)
        if values.shape[1] > 1:
            ax.fill_between(epochs, values.min(1), values.max(1), alpha=0.25)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    acc_ax.legend()
    fig.suptitle(title)
    _save_figure(fig, path)
    plt.close(fig)
