"""Pictures of a fine-tuning run, written to ``MODEL_DIR/plots/`` beside ``results.json``.

* ``learning_curves.png``: training loss, the validation metric per epoch (best epoch marked), learning rate;
* per task kind, on the test sets: ``confusion_matrix.png`` (classification; per residue for Q3/Q8, each state's
  accuracy on its row), ``regression_scatter.png`` (predicted against true, with Spearman),
  ``contact_maps.png`` (predicted contact probability above, true contacts below, for a few test proteins).

:func:`draw_finetune_plots` is what the runner calls: it takes a ``predict(examples) -> outputs`` function (the
per-example outputs of ``ankh_jax.downstream.trainer.predict``) and never raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from ankh_jax.downstream import metrics
from ankh_jax.plots.common import (
    PLOTS_SUBDIR,
    PlotInputError,
    describe_skipped_lines,
    finite_series,
    note,
    pyplot,
    save_figure,
)
from ankh_jax.storage.jsonl import read_jsonl

CLASSIFICATION_KINDS = ("sequence_class", "sequence_binary", "residue_class")
MAX_TEST_PANELS = 4
CONTACT_PROTEINS = 3
ANNOTATE_UP_TO = 12   # classes; larger confusion matrices are drawn without numbers in the cells
MAX_MATRIX_CLASSES = 25  # remote homology has ~1,200 folds: show the most frequent ones
TRAIN_ROW_KEYS = {"loss", "grad_norm", "learning_rate", "steps_per_s"}
VALID_ROW_SKIP = {"step", "epoch", "split", "best", "epoch_seconds"}


def split_runs(rows: list[dict]) -> list[list[dict]]:
    """``metrics.jsonl`` rows split where a run restarted in the same directory (the step goes back)."""
    runs, last_step = [[]], None
    for r in rows:
        step = r.get("step")
        if isinstance(step, int) and last_step is not None and step < last_step:
            runs.append([])
        runs[-1].append(r)
        if isinstance(step, int):
            last_step = step
    return [run for run in runs if run]


def plot_learning_curves(model_dir: str) -> str:
    path = os.path.join(model_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotInputError(f"{model_dir}: no metrics.jsonl")
    rows, bad = read_jsonl(path)
    if bad:
        note(describe_skipped_lines(path, bad))
    runs = split_runs(rows)
    if not runs:
        raise PlotInputError(f"{path}: no rows to plot")
    if len(runs) > 1:
        note(f"{path} holds {len(runs)} runs (the step restarts); plotting the last one")
    rows = runs[-1]
    train = [r for r in rows if "split" not in r and TRAIN_ROW_KEYS & set(r)]
    valid = [r for r in rows if r.get("split") == "valid"]
    if not valid:
        note(f"{path}: no validation rows; validation curve not drawn")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    steps, losses = finite_series(train, "loss")
    axes[0].plot(steps, losses, ".-")
    axes[0].set_title("training loss")
    names = [k for k in (valid[0] if valid else {}) if k not in VALID_ROW_SKIP]
    for name in names:
        steps, values = finite_series(valid, name)
        axes[1].plot(steps, values, "o-", label=name, markersize=4)
    best = [r for r in valid if r.get("best")]
    if best and names:
        axes[1].plot(best[-1]["step"], best[-1][names[0]], "*", markersize=14, color="gold",
                     markeredgecolor="black", label=f"best (epoch {best[-1].get('epoch')})")
    if names:
        axes[1].legend(loc="best")
    axes[1].set_title("validation (each epoch)")
    steps, rates = finite_series(train, "learning_rate")
    axes[2].plot(steps, rates, ".-")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "learning_curves.png"))


def confusion_matrix(predicted, true, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts over the scored positions (``true != -100``)."""
    p, y = np.asarray(predicted).ravel(), np.asarray(true).ravel()
    scored = y != metrics.IGNORE
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (y[scored].astype(np.int64), p[scored].astype(np.int64)), 1)
    return counts


def predicted_classes(kind: str, outputs: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted, true)`` class ids, one per scored sequence or residue."""
    if kind == "sequence_binary":
        return np.array([o > 0 for o in outputs], np.int64), np.asarray(labels, np.int64)
    if kind == "sequence_class":
        return np.array([int(np.argmax(o)) for o in outputs]), np.asarray(labels, np.int64)
    if kind == "residue_class":
        return np.concatenate(outputs), np.concatenate(labels)
    raise ValueError(f"no classes for label kind {kind!r}")


def _class_names(data) -> list[str]:
    if data.spec.kind == "sequence_binary":
        return ["0", "1"]
    return [str(c) for c in data.classes]


def most_frequent_block(counts: np.ndarray, names: list[str], limit: int) -> tuple[np.ndarray, list[str],
                                                                                  list[str]]:
    """The confusion matrix cut to the ``limit`` most frequent true classes (all of them when there are no more),
    plus an ``other`` column counting their predictions outside that set: ``(counts, row names, column names)``.
    """
    if len(names) <= limit:
        return counts, names, names
    shown = np.argsort(-counts.sum(axis=1), kind="stable")[:limit]
    block = counts[np.ix_(shown, shown)]
    other = counts[shown].sum(axis=1) - block.sum(axis=1)
    rows = [names[i] for i in shown]
    return np.concatenate([block, other[:, None]], axis=1), rows, [*rows, "other"]


def plot_confusion_matrices(model_dir: str, data, predictions: dict[str, list]) -> str:
    kind, names = data.spec.kind, _class_names(data)
    if len(names) > MAX_MATRIX_CLASSES:
        note(f"task {data.spec.name}: {len(names)} classes; the confusion matrices show the "
             f"{MAX_MATRIX_CLASSES} most frequent in each test set")
    plt = pyplot()
    size = max(4.5, 0.45 * min(len(names), MAX_MATRIX_CLASSES + 1) + 2.5)
    fig, axes = plt.subplots(1, len(predictions), figsize=(size * len(predictions), size), squeeze=False)
    per_state = kind == "residue_class" and len(names) in (3, 8)
    for ax, (test, outputs) in zip(axes[0], predictions.items(), strict=True):
        predicted, true = predicted_classes(kind, outputs, data.splits[f"test/{test}"].labels)
        full = confusion_matrix(predicted, true, len(names))
        counts, row_names, column_names = most_frequent_block(full, names, MAX_MATRIX_CLASSES)
        rows = counts.sum(axis=1, keepdims=True)
        fractions = counts / np.maximum(rows, 1)
        ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
        if len(column_names) <= ANNOTATE_UP_TO:
            for i, j in np.ndindex(counts.shape):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if fractions[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(column_names)), column_names, rotation=90 if len(column_names) > 4 else 0)
        ax.set_yticks(range(len(row_names)),
                      [f"{n}  {fractions[i, i]:.2f} of {rows[i, 0]}" for i, n in enumerate(row_names)])
        total = np.trace(full) / max(full.sum(), 1)
        score = f"Q{len(names)}" if per_state else "accuracy"
        shown = f" ({len(row_names)} most frequent of {len(names)} classes)" if len(row_names) < len(names) else ""
        ax.set_title(f"{test}: {score} {total:.3f}{shown}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (row: accuracy of the class, count)")
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "confusion_matrix.png"))


def plot_regression(model_dir: str, data, predictions: dict[str, list]) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(predictions), figsize=(5 * len(predictions), 4.8), squeeze=False)
    for ax, (test, outputs) in zip(axes[0], predictions.items(), strict=True):
        true = np.asarray(data.splits[f"test/{test}"].labels, np.float64)
        predicted = np.asarray(outputs, np.float64)
        ax.scatter(true, predicted, s=6, alpha=0.5, linewidths=0)
        lo, hi = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=1, label="predicted = true")
        rho = metrics.spearman(predicted, true) if len(true) > 1 else float("nan")
        ax.set_title(f"{test}: Spearman {rho:.3f} (n={len(true)})")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.legend(loc="upper left")
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "regression_scatter.png"))


def plot_contact_maps(model_dir: str, test: str, outputs: list, labels: list, min_separation: int) -> str:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(outputs), figsize=(4 * len(outputs), 8), squeeze=False)
    for k, (prob, (contacts, valid)) in enumerate(zip(outputs, labels, strict=True)):
        length = prob.shape[0]
        precision = metrics.contact_precision([prob], [contacts], [valid], fractions=(5,))["L/5"]
        axes[0, k].imshow(prob, cmap="Greys", vmin=0, vmax=1)
        axes[0, k].set_title(f"{test} #{k + 1} (L={length}): predicted\nlong-range precision L/5 {precision:.2f}")
        shown = np.where(np.outer(valid, valid), contacts.astype(np.float64), np.nan)
        near = np.abs(np.subtract.outer(np.arange(length), np.arange(length))) < min_separation
        shown[near] = np.nan  # pairs closer than the trained separation are not predicted
        axes[1, k].imshow(shown, cmap="Greys", vmin=0, vmax=1)
        axes[1, k].set_title(f"true contacts (|i-j| >= {min_separation})")
        for ax in axes[:, k]:
            ax.set_xlabel("residue")
            ax.set_ylabel("residue")
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "contact_maps.png"))


def plot_test_predictions(model_dir: str, data, predict: Callable[[object], list]) -> list[str]:
    """The per-kind pictures of the test sets (predictions from ``predict``)."""
    from ankh_jax.downstream.task_spec import Examples

    kind = data.spec.kind
    tests = [name[len("test/"):] for name in data.test_names()]
    if not tests:
        note(f"task {data.spec.name}: no test set; no test-set plots")
        return []
    if kind not in (*CLASSIFICATION_KINDS, "sequence_regression", "contact"):
        note(f"task {data.spec.name}: no test-set plot for label kind {kind}")
        return []
    if kind == "contact":
        examples = data.splits[f"test/{tests[0]}"]
        few = Examples(examples.sequences[:CONTACT_PROTEINS], examples.labels[:CONTACT_PROTEINS])
        return [plot_contact_maps(model_dir, tests[0], predict(few), few.labels, data.spec.min_contact_separation)]
    if len(tests) > MAX_TEST_PANELS:
        note(f"task {data.spec.name}: plotting the first {MAX_TEST_PANELS} of {len(tests)} test sets "
             f"(skipped {', '.join(tests[MAX_TEST_PANELS:])})")
        tests = tests[:MAX_TEST_PANELS]
    predictions = {test: predict(data.splits[f"test/{test}"]) for test in tests}
    if kind == "sequence_regression":
        return [plot_regression(model_dir, data, predictions)]
    return [plot_confusion_matrices(model_dir, data, predictions)]


def draw_finetune_plots(model_dir: str, data, predict: Callable[[object], list]) -> list[str]:
    """Learning curves and the task kind's test-set pictures under ``MODEL_DIR/plots/``; returns the paths
    written. Never raises: whatever cannot be drawn is named in one line on stderr, and the run goes on."""
    written = []
    for what, draw in (("learning curves", lambda: [plot_learning_curves(model_dir)]),
                       ("test-set plots", lambda: plot_test_predictions(model_dir, data, predict))):
        try:
            written += draw()
        except ImportError as e:
            note(f"{what} not drawn: {e} (pip install 'ankh-jax[viz]')")
        except Exception as e:  # noqa: BLE001 - a picture never fails a fine-tuning run
            note(f"{what} not drawn: {type(e).__name__}: {e}")
    return written
