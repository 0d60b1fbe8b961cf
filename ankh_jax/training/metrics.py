"""Run metrics: ``metrics.jsonl`` (one JSON object per log step), TensorBoard event files, and a progress bar.

One writer (:class:`MetricsWriter`) for pretraining and fine-tuning. Only process 0 writes. Pretraining's rows are
``{"step": int, "kind": "train" | "eval", ...scalars}`` (:meth:`MetricsWriter.write`, mirrored to TensorBoard);
fine-tuning's are ``{"step", "epoch", ...}`` with ``"split": "valid"`` on evaluation rows
(:meth:`MetricsWriter.write_row`, as given). Each row is appended whole, so a crash leaves at most a partial last
line. On resume, rows beyond the restored step (and such a partial line) are dropped first, so the file always
describes one consistent run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.storage.jsonl import JsonlWriter, line_count, read_jsonl
from ankh_jax.storage.mirror import LocalMirror
from ankh_jax.storage.paths import as_path

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_SUBDIR = "tensorboard"

log = logging.getLogger(__name__)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def read_metrics(model_dir) -> list[dict]:
    """The rows of ``metrics.jsonl`` (local or ``gs://``). A last line cut short by a crash mid-write is dropped
    (with a warning); a damaged line elsewhere is an error naming it."""
    path = as_path(model_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows, bad = read_jsonl(path)
    if bad:
        last = line_count(path)
        if bad != [last]:
            raise InputError(f"{path}: line {bad[0]} is not a JSON object")
        log.warning("%s: dropped an incomplete last line %d (a crash while writing it)", path, last)
    return rows


class MetricsWriter:
    def __init__(self, model_dir, *, total_steps: int, start_step: int = 0, tensorboard: bool = True,
                 progress: bool = True, progress_desc: str | None = None):
        self.enabled = jax.process_index() == 0
        self.model_dir = as_path(model_dir)
        self.path = self.model_dir / METRICS_FILE
        self.total_steps = total_steps
        self._tb = {}
        self._tb_mirror: LocalMirror | None = None
        self._bar = None
        if not self.enabled:
            return
        self._rows = JsonlWriter(self.path)
        # Rows beyond the restored step (and a partial last line) are dropped, so the file is one run.
        self._rows.keep(lambda r: r.get("step", 0) <= start_step, read_metrics(self.model_dir))
        if tensorboard:
            from tensorboardX import SummaryWriter

            # Event files grow by appending: written locally, mirrored whole to gs:// (storage.mirror).
            self._tb_mirror = LocalMirror(self.model_dir / TENSORBOARD_SUBDIR)
            for kind in ("train", "eval"):
                self._tb[kind] = SummaryWriter(os.path.join(self._tb_mirror.directory, kind),
                                               purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                             file=sys.stderr, mininterval=1.0, smoothing=0.1, desc=progress_desc)

    def advance(self, steps: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def write(self, step: int, kind: str, scalars: dict[str, float]) -> None:
        """A ``{"step", "kind", ...scalars}`` row (non-finite floats as strings), also to TensorBoard."""
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, **{k: _plain(v) for k, v in scalars.items()}}
        self.write_row(row)
        tb = self._tb.get(kind)
        if tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and math.isfinite(v):
                    tb.add_scalar(k, v, step)
            tb.flush()
            self._tb_mirror.sync()

    def write_text(self, tag: str, markdown: str, step: int) -> None:
        """A TensorBoard text summary (markdown) on the train writer: ``tag`` in the Text tab at ``step``."""
        tb = self._tb.get("train")
        if self.enabled and tb is not None:
            tb.add_text(tag, markdown, step)
            tb.flush()
            self._tb_mirror.sync()

    def write_row(self, row: dict[str, Any]) -> None:
        """Appends ``row`` (plain JSON values, with an int ``"step"``) as one line, whole."""
        if not self.enabled:
            return
        self._rows.append(row)

    def log_line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def eta(self, step: int, steps_per_s: float) -> str:
        if steps_per_s <= 0:
            return "?"
        return _format_duration((self.total_steps - step) / steps_per_s)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for tb in self._tb.values():
            tb.close()
        self._tb = {}
        if self._tb_mirror is not None:
            self._tb_mirror.close()
            self._tb_mirror = None


def gin_config_markdown(config_str: str) -> str:
    """The operative gin config as markdown for TensorBoard's Text tab (as t5x shows it): bindings as an indented
    code block, gin's ``# Parameters for X:`` comments as headings, its ``# ====`` rules dropped."""
    lines = []
    for line in config_str.splitlines():
        if line.startswith("# ===="):
            continue
        if line.startswith("# ") and line.endswith(":"):
            lines.append("#### " + line[2:])
        elif line.startswith("#"):
            lines.append(line.lstrip("# "))
        else:
            lines.append("    " + line)
    return "\n".join(lines)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class Timer:
    """Training time and counts between log steps.

    ``busy_seconds`` adds up only the time spent in training steps (reading the batch, the step itself), so
    rates and MFU do not fall when an eval or a checkpoint save happens in the interval (t5x reports both kinds);
    ``wall_seconds`` is everything since the last reset, for the ETA. Steps added with ``count=False`` (the
    compiling first step) are left out of the rates.
    """

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.tokens = 0.0
        self.busy = 0.0

    def add(self, tokens: float, seconds: float, count: bool = True) -> None:
        if count:
            self.steps += 1
            self.tokens += tokens
            self.busy += seconds

    def busy_seconds(self) -> float:
        return max(self.busy, 1e-9)

    def wall_seconds(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


class TrainMetricsAccumulator:
    """Token-weighted sums of the train metrics between log steps (the loss is exact over the interval)."""

    def __init__(self):
        self.sums = {"loss_sum": 0.0, "z_loss_sum": 0.0, "correct_sum": 0.0, "weight_sum": 0.0}
        self.last: dict = {}
        self.grad_norm_sq = 0.0
        self.steps = 0

    def add(self, metrics: dict) -> None:
        for k in self.sums:
            self.sums[k] += float(metrics[k])
        self.grad_norm_sq += float(metrics["grad_norm"]) ** 2
        self.steps += 1
        self.last = metrics

    def summary(self) -> dict:
        w = max(self.sums["weight_sum"], 1.0)
        return {"loss": self.sums["loss_sum"] / w, "accuracy": self.sums["correct_sum"] / w,
                "z_loss": self.sums["z_loss_sum"] / w, "learning_rate": float(self.last["learning_rate"]),
                "grad_norm": float(np.sqrt(self.grad_norm_sq / max(self.steps, 1))),
                "target_tokens": self.sums["weight_sum"]}
