"""Pictures of a fine-tuning run, written to ``MODEL_DIR/plots/`` beside ``results.json``.

* ``learning_curves.png``: training loss, the validation metric per epoch (best epoch marked), learning rate;
* on the test sets: ``confusion_matrix.png`` (classification; per residue for Q3/Q8, each state's accuracy on its
  row), ``regression_scatter.png`` (predicted against true, with Spearman), ``contact_maps.png`` (predicted
  contact probability above, true contacts below, for a few test proteins).

The pictures take plain arrays: which one a task gets, and how its predictions become those arrays, is its label
kind's ``plot`` (``ankh_jax.downstream.kinds``), from the test predictions the run has already scored. Nothing here
knows a task or a label kind. :func:`draw_finetune_plots` is what the runner calls, and never raises.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

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
    """``[true, predicted]`` counts over the scored positions (``true >= 0``; -100 marks the unscored)."""
    p, y = np.asarray(predicted).ravel(), np.asarray(true).ravel()
    scored = y >= 0
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (y[scored].astype(np.int64), p[scored].astype(np.int64)), 1)
    return counts


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


def first_test_sets(task: str, predictions: dict) -> dict:
    """The first :data:`MAX_TEST_PANELS` test sets of ``predictions`` (one line names the ones left out)."""
    tests = list(predictions)
    if len(tests) > MAX_TEST_PANELS:
        note(f"task {task}: plotting the first {MAX_TEST_PANELS} of {len(tests)} test sets "
             f"(skipped {', '.join(tests[MAX_TEST_PANELS:])})")
    return {test: predictions[test] for test in tests[:MAX_TEST_PANELS]}


def plot_confusion_matrices(model_dir: str, task: str, panels: dict[str, tuple], names: list[str],
                            score: str = "accuracy") -> str:
    """One confusion matrix per test set: ``panels`` is ``{test: (predicted, true)}`` class ids; ``score`` names
    the overall accuracy in the titles (``Q3`` for secondary structure)."""
    if len(names) > MAX_MATRIX_CLASSES:
        note(f"task {task}: {len(names)} classes; the confusion matrices show the "
             f"{MAX_MATRIX_CLASSES} most frequent in each test set")
    plt = pyplot()
    size = max(4.5, 0.45 * min(len(names), MAX_MATRIX_CLASSES + 1) + 2.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (test, (predicted, true)) in zip(axes[0], panels.items(), strict=True):
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
        shown = f" ({len(row_names)} most frequent of {len(names)} classes)" if len(row_names) < len(names) else ""
        ax.set_title(f"{test}: {score} {total:.3f}{shown}")
        ax.set_xlabel("predicted")
        ax.set_ylabel("true (row: accuracy of the class, count)")
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "confusion_matrix.png"))


def plot_regression(model_dir: str, panels: dict[str, tuple]) -> str:
    """Predicted against true per test set: ``panels`` is ``{test: (true, predicted, spearman)}``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.8), squeeze=False)
    for ax, (test, (true, predicted, rho)) in zip(axes[0], panels.items(), strict=True):
        true, predicted = np.asarray(true, np.float64), np.asarray(predicted, np.float64)
        ax.scatter(true, predicted, s=6, alpha=0.5, linewidths=0)
        lo, hi = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", linewidth=1, label="predicted = true")
        ax.set_title(f"{test}: Spearman {rho:.3f} (n={len(true)})")
        ax.set_xlabel("true")
        ax.set_ylabel("predicted")
        ax.legend(loc="upper left")
    fig.tight_layout()
    return save_figure(fig, os.path.join(model_dir, PLOTS_SUBDIR, "regression_scatter.png"))


def plot_contact_maps(model_dir: str, test: str, proteins: list[tuple], min_separation: int) -> str:
    """Predicted (above) and true (below) contact maps: ``proteins`` is ``[(probability [L, L], contacts [L, L],
    valid [L], long-range precision at L/5)]``."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(proteins), figsize=(4 * len(proteins), 8), squeeze=False)
    for k, (prob, contacts, valid, precision) in enumerate(proteins):
        length = prob.shape[0]
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


def draw_finetune_plots(model_dir: str, draw_test_plots: Callable[[], list[str]] | None = None) -> list[str]:
    """Learning curves, then ``draw_test_plots()`` (the task's test-set pictures), under ``MODEL_DIR/plots/``;
    returns the paths written. Never raises: whatever cannot be drawn is named in one line on stderr, and the run
    goes on."""
    written = []
    steps = [("learning curves", lambda: [plot_learning_curves(model_dir)])]
    if draw_test_plots is not None:
        steps.append(("test-set plots", draw_test_plots))
    for what, draw in steps:
        try:
            written += draw()
        except ImportError as e:
            note(f"{what} not drawn: {e} (pip install 'ankh-jax[viz]')")
        except Exception as e:  # noqa: BLE001 - a picture never fails a fine-tuning run
            note(f"{what} not drawn: {type(e).__name__}: {e}")
    return written
