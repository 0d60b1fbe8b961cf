"""What every picture shares: a headless pyplot, atomic PNG writes, tolerant reading of ``metrics.jsonl``."""

from __future__ import annotations

import sys

from ankh_jax.storage import atomic

PLOTS_SUBDIR = "plots"
DPI = 110


class PlotInputError(ValueError):
    """An input a picture cannot be drawn from (missing file, wrong format); the message names it."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    """Writes ``fig`` to ``path`` (local or ``gs://``) through a temporary file (``storage.atomic``): a reader
    (or a kill) never sees half a PNG, and a redraw replaces the old picture in one step."""
    plt = pyplot()
    try:
        with atomic.local_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def note(text: str) -> None:
    """One line on stderr about something skipped or not drawn."""
    print(f"plot: {text}", file=sys.stderr, flush=True)


def describe_skipped_lines(path: str, bad: list[int]) -> str:
    shown = ", ".join(str(n) for n in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return f"{path}: skipped {len(bad)} unreadable line(s) ({shown})"


def finite_series(rows: list[dict], key: str, *, positive: bool = False) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of the rows holding a finite number under ``key`` (``positive``: > 0 only)."""
    import math

    steps, values = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        if positive and v <= 0:
            continue
        if "step" in r:
            steps.append(r["step"])
            values.append(float(v))
    return steps, values
