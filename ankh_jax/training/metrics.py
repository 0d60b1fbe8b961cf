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
import jax.numpy as jnp
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


def _summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without torch: tensorboardX imports torch, when it is installed,
    only to recognise torch tensors (we pass floats), and that import costs a trainer process ~3 s at start-up."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX treats as "not installed"
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


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
            SummaryWriter = _summary_writer_class()
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
    """Training time between log steps, without waiting for any step.

    The host dispatches steps ahead of the devices, so a step's own duration is never observed. An interval starts
    right after a sync with the devices (a log step's metrics fetch); its training time is the wall time to the next
    such sync, less what was :meth:`exclude` d (evals, checkpoint saves, plots: each measured after a sync), so
    rates and MFU do not fall when an eval happens in the interval (t5x reports both kinds). ``wall_seconds``
    includes everything, for the ETA.
    """

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.excluded = 0.0

    def step(self) -> None:
        self.steps += 1

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def busy_seconds(self) -> float:
        return max(self.wall_seconds() - self.excluded, 1e-9)

    def wall_seconds(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)


_SUMS = ("loss_sum", "z_loss_sum", "correct_sum", "weight_sum", "input_nonpad", "input_slots", "target_nonpad",
         "target_slots")


@jax.jit
def _accumulate(acc: dict, metrics: dict) -> dict:
    out = {k: acc[k] + metrics[k].astype(acc[k].dtype) for k in _SUMS}
    fresh = (acc["first_bad_step"] < 0) & ~metrics["finite"]
    loss = metrics["loss_sum"] / jnp.maximum(metrics["weight_sum"], 1.0)
    out.update(grad_norm_sq=acc["grad_norm_sq"] + jnp.square(metrics["grad_norm"]), steps=acc["steps"] + 1,
               learning_rate=metrics["learning_rate"],
               first_bad_step=jnp.where(fresh, metrics["step"], acc["first_bad_step"]),
               bad_loss=jnp.where(fresh, loss, acc["bad_loss"]),
               bad_grad_norm=jnp.where(fresh, metrics["grad_norm"], acc["bad_grad_norm"]))
    return out


def _zeros() -> dict:
    acc = {k: jnp.zeros((), jnp.float32) for k in _SUMS + ("grad_norm_sq", "learning_rate", "bad_loss",
                                                          "bad_grad_norm")}
    acc.update(steps=jnp.zeros((), jnp.int32), first_bad_step=jnp.full((), -1, jnp.int32))
    return acc


class TrainMetricsAccumulator:
    """Sums of the train metrics between log steps, kept on the devices: adding a step's metrics dispatches one
    tiny jitted sum and never waits; :meth:`fetch` (at log, checkpoint and eval steps) is the only transfer. The
    first non-finite step's number, loss and gradient norm are kept too, so the check at the next fetch names it."""

    def __init__(self):
        self.acc: dict | None = None

    def add(self, metrics: dict) -> None:
        """Adds one step's metrics (the train step's dict, with the step's number as ``"step"``)."""
        self.acc = _accumulate(_zeros() if self.acc is None else self.acc, metrics)

    def fetch(self) -> dict:
        """The sums so far as Python numbers (waits for the steps added so far)."""
        return {k: v.item() for k, v in jax.device_get(self.acc).items()} if self.acc is not None else {}

    def reset(self) -> None:
        self.acc = None

    @staticmethod
    def summary(host: dict) -> dict:
        """Token-weighted means over the interval (the loss is exact over it), and how full the rows were: the
        non-padding share of the input and target tokens."""
        w = max(host["weight_sum"], 1.0)
        return {"loss": host["loss_sum"] / w, "accuracy": host["correct_sum"] / w, "z_loss": host["z_loss_sum"] / w,
                "learning_rate": host["learning_rate"],
                "grad_norm": float(np.sqrt(host["grad_norm_sq"] / max(host["steps"], 1))),
                "target_tokens": host["weight_sum"],
                "input_fill": host["input_nonpad"] / max(host["input_slots"], 1.0),
                "target_fill": host["target_nonpad"] / max(host["target_slots"], 1.0)}
