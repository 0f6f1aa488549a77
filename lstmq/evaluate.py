"""One evaluator for every path (float, QAT, PTQ, integer): metrics, tables and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lstmq.io import atomic_write_bytes

def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support (keyed by class name) and the
    confusion matrix (rows: true class, columns: predicted, in ``class_names`` order).

    Accuracy of no clips is None (never NaN, which JSON cannot hold).
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    classes = list(range(len(class_names)))
    if len(labels) == 0:
        zeros = np.zeros(len(classes))
        precision = recall = f1 = support = zeros
        confusion = np.zeros((len(classes), len(classes)), int)
    else:
        # imported here: scikit-learn adds about a second to every process that loads this
        # module (`lstmq predict` among them), and only metrics need it
        from sklearn.metrics import (  # pylint: disable=import-outside-toplevel
            confusion_matrix, precision_recall_fscore_support)

        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predictions, labels=classes, zero_division=0)
        confusion = confusion_matrix(labels, predictions, labels=classes)
    return {
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else None,
        "count": int(len(labels)),
        "classes": list(class_names),
        "per_class": {
            name: {"precision": float(precision[c]), "recall": float(recall[c]),
                   "f1": float(f1[c]), "support": int(support[c])}
            for c, name in enumerate(class_names)
        },
        "confusion": confusion.tolist(),
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
    width = max([5, *(len(name) for name in metrics["per_class"])])
    lines = [f"{'class':>{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:>{width}} {row['precision']:9.4f} {row['recall']:7.4f} "
                     f"{row['f1']:6.4f} {row['support']:7d}")
    if metrics.get("accuracy") is not None:
        lines.append(f"accuracy {metrics['accuracy'] * 100:.2f}% of {metrics['count']} clips")
    return "\n".join(lines)


def save_figure(fig, path: Path) -> None:
    """PNG written atomically."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_confusion(confusion: Sequence[Sequence[int]], path: Path, title: str = "",
                   class_names: Sequence[str] | None = None) -> None:
    """Confusion matrix with class names on both axes (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(matrix))]
    size = min(12.0, 3.0 + 0.35 * len(matrix))
    fig, ax = plt.subplots(figsize=(size + 0.5, size))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > matrix.max() / 2 else "black")
    rotate = 45 if max(len(n) for n in names) > 3 else 0
    ax.set_xticks(range(len(matrix)), names, rotation=rotate, ha="right" if rotate else "center")
    ax.set_yticks(range(len(matrix)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    save_figure(fig, path)
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
    save_figure(fig, path)
    plt.close(fig)
