"""``MODEL_DIR/plots/training.png``: a pretraining run's curves from its ``metrics.jsonl``.

Four panels against step: train and eval loss, masked-token accuracy (train and eval), learning rate, and
throughput (target tokens/s). The file may belong to a running run (a partial last line is skipped) or a
finished one; a run without eval rows gets the train curves and a line saying so.
"""

from __future__ import annotations

import os

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
from ankh_jax.storage.paths import as_path

METRICS_FILE = "metrics.jsonl"  # ankh_jax.training.metrics.METRICS_FILE (not imported: it pulls in jax)
TRAINING_PNG = "training.png"


def training_plot_path(model_dir: str) -> str:
    return os.fspath(as_path(model_dir) / PLOTS_SUBDIR / TRAINING_PNG)


def load_training_rows(model_dir: str) -> tuple[list[dict], list[dict]]:
    """``(train_rows, eval_rows)`` of ``MODEL_DIR/metrics.jsonl``; :class:`PlotInputError` if there are none."""
    if not as_path(model_dir).is_dir():
        raise PlotInputError(f"{model_dir}: no such directory")
    path = as_path(model_dir) / METRICS_FILE
    if not path.is_file():
        raise PlotInputError(f"{model_dir}: no {METRICS_FILE} (not a training directory, or no step logged yet)")
    rows, bad = read_jsonl(path)
    if bad:
        note(describe_skipped_lines(path, bad))
    train = [r for r in rows if r.get("kind", "train") == "train" and "step" in r]
    evals = [r for r in rows if r.get("kind") == "eval" and "step" in r]
    if not train and not evals:
        raise PlotInputError(f"{path}: no train or eval rows to plot")
    return train, evals


def plot_training(model_dir: str, output: str | None = None) -> str:
    """Draws the training curves of ``model_dir`` into ``output`` (default ``MODEL_DIR/plots/training.png``)
    and returns its path. Raises :class:`PlotInputError` when there is nothing to draw."""
    train, evals = load_training_rows(model_dir)
    if not evals:
        note(f"{model_dir}: no eval rows yet; eval loss and accuracy not drawn")
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, key, title in ((axes[0, 0], "loss", "cross-entropy loss"),
                           (axes[0, 1], "accuracy", "masked-token accuracy")):
        for rows, label, style in ((train, "train", ".-"), (evals, "eval", "o-")):
            steps, values = finite_series(rows, key)
            if steps:
                ax.plot(steps, values, style, label=label, markersize=4)
        ax.set_title(title)
        ax.legend(loc="best")
    _single_curve(axes[1, 0], train, "learning_rate", "learning rate", positive=False)
    _, mfu = finite_series(train, "mfu", positive=True)
    _single_curve(axes[1, 1], train, "target_tokens_per_s",
                  "throughput (target tokens/s)" + (f", last MFU {mfu[-1]:.1%}" if mfu else ""), positive=True)
    last = max(r["step"] for r in train + evals)
    fig.suptitle(f"{as_path(model_dir).name}: step {last}")
    for ax in axes.ravel():
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, output or training_plot_path(model_dir))


def _single_curve(ax, rows, key, title, *, positive):
    steps, values = finite_series(rows, key, positive=positive)  # throughput 0 = the compiling first step
    if steps:
        ax.plot(steps, values, ".-")
    else:
        ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)


def draw_training_plots(model_dir: str) -> str | None:
    """Redraws ``MODEL_DIR/plots/training.png``; returns its path, or ``None`` after one line on stderr saying
    why not. Never raises: the trainer calls it at each checkpoint and at the end, and a picture must never stop
    a run."""
    try:
        return plot_training(model_dir)
    except ImportError as e:
        note(f"training plots not drawn: {e} (pip install 'ankh-jax[viz]')")
    except Exception as e:  # noqa: BLE001 - a picture never stops training
        note(f"training plots not drawn: {type(e).__name__}: {e}")
    return None
