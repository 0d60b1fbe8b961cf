"""What one pretraining run is, as a few frozen dataclasses bound in gin (t5x's ``DatasetConfig`` /
``SaveCheckpointConfig`` spirit): :class:`ProgramConfig` (the model and its train step: what ``plan_memory``
compiles too), :class:`DataConfig`, :class:`LoopConfig`, :class:`CheckpointConfig` and :class:`EvalConfig`.

Their defaults are the one set of defaults: ``configs/runs/pretrain.gin`` binds only what a run must say (model,
task, lengths, batch, steps) and the choices it makes differently, never a default again. Each ``check()`` reports
a bad value in one line naming its binding (and the pretrain configs' macro where there is one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gin

from ankh_jax.training.run_dir import RunConfigError


def itstime(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, checkpoint, eval) falls on ``step``: every ``every`` steps (0: never) and at
    the ``last`` step (big_vision's ``itstime``)."""
    return step == last or (every > 0 and step % every == 0)


def _check_int(binding: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        what = "positive" if low else "0 (never) or positive"
        raise RunConfigError(f"{binding} must be an integer, {what}; got {value!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ProgramConfig:
    """The model and its train step (``build_program``; ``python -m ankh_jax.plan_memory`` reads the same).

    model_config: a ``T5Config`` (gin: ``%MODEL_CONFIG`` from configs/models/*.gin).
    num_microbatches: gradient accumulation; each step's batch is split into this many micro-batches.
    """

    model_config: Any
    num_microbatches: int = 1
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def check(self) -> None:
        _check_int("ProgramConfig.num_microbatches", self.num_microbatches, 1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training data: a seqio task read by ``input_fn`` (default ``ankh_jax.data.input_pipeline.make_input``).

    feature_lengths: ``{"inputs": 512}`` (targets follow from the noise density) or both lengths.
    global_batch_size: examples per step over all hosts (each host reads global / num_hosts).
    pack: seqio's packing of several proteins per row (see README, "Packing").
    num_data_shards: independent data streams (default: one per host); each host reads an equal run of them. Fixed,
      it makes the batches independent of the number of hosts, so a run can move between host counts (elastic
      restart) with its data position. A multiple of every host count the run will use.
    """

    task_name: str
    feature_lengths: Mapping[str, int]
    global_batch_size: int
    pack: bool = False
    seed: int = 0
    num_data_shards: int | None = None
    input_fn: Callable | None = None

    def check(self, num_microbatches: int) -> None:
        _check_int("DataConfig.global_batch_size (BATCH_SIZE)", self.global_batch_size, 1)
        if self.global_batch_size % num_microbatches:
            raise RunConfigError(f"DataConfig.global_batch_size (BATCH_SIZE) = {self.global_batch_size} is not "
                                 f"divisible by ProgramConfig.num_microbatches = {num_microbatches}")
        _check_int("DataConfig.num_data_shards", self.num_data_shards, 1, allow_none=True)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The loop around the steps.

    log_every_steps: metrics are fetched from the devices, logged and checked for a NaN/inf loss every this many
      steps (the host never waits for a step otherwise), so at most this many steps run past a non-finite loss
      before the run stops; a checkpoint is never written after one.
    profile_steps: ``(start, end)``: a ``jax.profiler`` trace of steps start..end (inclusive) into
      ``MODEL_DIR/tensorboard/plugins/profile`` (TensorBoard's Profile tab).
    peak_flops_per_device: for MFU; default a table by device kind, or a measured matmul on CPU.
    draw_plots: redraw ``MODEL_DIR/plots/training.png`` at each checkpoint and at the end (process 0).
    """

    num_train_steps: int
    log_every_steps: int = 100
    seed: int = 0
    profile_steps: tuple[int, int] | None = None
    peak_flops_per_device: float | None = None
    progress_bar: bool = True
    draw_plots: bool = True

    def check(self) -> None:
        _check_int("LoopConfig.num_train_steps (TRAIN_STEPS)", self.num_train_steps, 1)
        _check_int("LoopConfig.log_every_steps", self.log_every_steps, 1)
        if self.profile_steps is not None:
            start, end = (tuple(self.profile_steps) + (None, None))[:2]
            if not (isinstance(start, int) and isinstance(end, int) and 1 <= start <= end):
                raise RunConfigError(f"LoopConfig.profile_steps must be (start, end) with 1 <= start <= end; got "
                                     f"{self.profile_steps!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Saving and where a fresh run starts. init_from_hf: a HuggingFace Ankh directory to start from when
    MODEL_DIR holds no checkpoint (continued pretraining)."""

    every_steps: int = 2000
    keep: int = 3
    async_save: bool = True
    init_from_hf: str | None = None

    def check(self) -> None:
        _check_int("CheckpointConfig.every_steps", self.every_steps, 1)
        _check_int("CheckpointConfig.keep", self.keep, 1)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Validation: every ``every_steps`` steps (0: never) and at the end, at most ``steps`` batches (None: the
    whole split) of ``task_name`` (default: the training task) split ``split``."""

    every_steps: int = 5000
    steps: int | None = 100
    task_name: str | None = None
    split: str = "validation"

    def check(self) -> None:
        _check_int("EvalConfig.every_steps", self.every_steps, 0)
        _check_int("EvalConfig.steps", self.steps, 1, allow_none=True)
