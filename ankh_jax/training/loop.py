"""The pretraining loop: gin-configured ``train()``: data in, sharded steps, metrics, checkpoints, resume.

One call of :func:`train` does, in this order (everything that can fail on bad input happens before the first
write to ``model_dir``):

1. the mesh and rules (``Partitioner``), the model, the optimizer and the state layout (abstract shapes only);
2. the training (and validation) input iterators, each host reading its own shard of the global batch;
3. the state: resumed from the newest readable checkpoint in ``model_dir`` (with the input position), else loaded
   from a HuggingFace Ankh directory (``init_from_hf``), else random; always created already sharded;
4. ``model_config.json`` and ``config.gin`` written by process 0, then the loop: one jitted step per batch, a
   finiteness check per step (a NaN/inf loss stops the run naming the step, without saving), metrics every
   ``log_every_steps``, an async checkpoint every ``checkpoint_every_steps``, eval every ``eval_every_steps``, and a
   checkpoint-and-stop on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import gin
import jax
import numpy as np

from ankh_jax.io import checkpoints as ckpt_lib
from ankh_jax.training import flops as flops_lib
from ankh_jax.training import run_dir
from ankh_jax.training.metrics import (
    MetricsWriter,
    Timer,
    TrainMetricsAccumulator,
    gin_config_markdown,
)
from ankh_jax.training.partitioning import Partitioner
from ankh_jax.training.program import TrainProgram, build_program, evaluate
from ankh_jax.training.run_dir import RunConfigError
from ankh_jax.training.steps import BATCH_KEYS_REQUIRED, TrainState

log = logging.getLogger(__name__)

class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving."""


@dataclasses.dataclass
class TrainResult:
    step: int
    params: Any
    stopped_by: str  # "finished" | "preempted"
    last_train_metrics: dict
    last_eval_metrics: dict | None


def _default_input_fn():
    from ankh_jax.data.input_pipeline import make_input

    return make_input


class InputError(RuntimeError):
    """The training or validation data cannot be read."""


def _first_batch(iterator, where: str) -> dict:
    """The first batch, read before anything is written, so a missing data path or split fails early."""
    try:
        batch = next(iterator)
    except StopIteration:
        raise InputError(f"{where} is empty") from None
    except Exception as err:
        raise InputError(f"cannot read {where}: {type(err).__name__}: {err}") from err
    missing = [k for k in BATCH_KEYS_REQUIRED if k not in batch]
    if missing:
        raise InputError(f"{where}: batches lack {missing}; got {sorted(batch)}")
    return batch


@gin.configurable
def train(*, model_dir: str = gin.REQUIRED, model_config=gin.REQUIRED, task_name: str = gin.REQUIRED,
          feature_lengths: Mapping[str, int] = gin.REQUIRED, global_batch_size: int = gin.REQUIRED,
          num_train_steps: int = gin.REQUIRED, input_fn: Callable | None = None, pack: bool = False,
          data_seed: int = 0, seed: int = 0, log_every_steps: int = 50, checkpoint_every_steps: int = 1000,
          keep_checkpoints: int = 3, async_checkpoints: bool = True, eval_every_steps: int = 0,
          eval_task_name: str | None = None, eval_split: str = "validation", eval_steps: int | None = None,
          num_microbatches: int = 1, label_smoothing: float = 0.0, z_loss: float = 0.0,
          init_from_hf: str | None = None, peak_flops_per_device: float | None = None,
          partitioner: Partitioner | None = None, progress_bar: bool = True,
          num_data_shards: int | None = None, draw_plots: bool = True) -> TrainResult:
    """Pretrains (or continues pretraining) an Ankh model. See the module docstring and configs/runs/pretrain.gin.

    Args (the non-obvious ones):
      model_config: a ``T5Config`` (gin: ``%MODEL_CONFIG`` from configs/models/*.gin).
      feature_lengths: ``{"inputs": 512, "targets": ...}`` for the seqio task.
      global_batch_size: examples per step over all hosts (each host reads global / num_hosts).
      input_fn: ``make_input``-compatible factory (default ``ankh_jax.data.input_pipeline.make_input``).
      eval_steps: at most this many validation batches per eval (default: the whole split).
      num_microbatches: gradient accumulation; the batch is split into this many micro-batches per step.
      init_from_hf: a HuggingFace Ankh directory to start from when ``model_dir`` holds no checkpoint.
      peak_flops_per_device: for MFU; default a table by device kind, or a measured matmul on CPU.
      num_data_shards: independent data streams (default: one per host); each host reads an equal run of them.
        Fixed, it makes the batches independent of the number of hosts, so a run can move between host counts
        (elastic restart) with its data position, and 1 host gives the same numbers as several. A multiple of
        every host count the run will use.
      draw_plots: redraw ``MODEL_DIR/plots/training.png`` at each checkpoint and at the end (process 0).
    """
    _check_run_config(num_train_steps=num_train_steps, global_batch_size=global_batch_size,
                      log_every_steps=log_every_steps, checkpoint_every_steps=checkpoint_every_steps,
                      keep_checkpoints=keep_checkpoints, eval_every_steps=eval_every_steps, eval_steps=eval_steps,
                      num_microbatches=num_microbatches)
    if input_fn is None or input_fn is _default_input_fn():  # Ankh's objective: span corruption of the inputs
        _check_sentinels(feature_lengths)
    model_dir = run_dir.resolve_model_dir(model_dir)  # a local path or gs://BUCKET/run
    partitioner = partitioner or Partitioner()
    try:
        data_parallel = partitioner.batch_shards
    except ValueError as err:
        raise RunConfigError(f"Partitioner.mesh_shape: {err}") from None
    if global_batch_size % data_parallel:
        raise RunConfigError(f"train.global_batch_size (BATCH_SIZE) = {global_batch_size} is not divisible by the "
                             f"data-parallel size {data_parallel} (Partitioner.mesh_shape over "
                             f"{jax.device_count()} devices)")
    try:  # the schedule, the optimizer and the batch split are checked here, before anything is read or written
        program = build_program(model_config, partitioner, num_microbatches=num_microbatches,
                                label_smoothing=label_smoothing, z_loss=z_loss)
        shard_id, num_shards, host_batch = partitioner.host_data_shard(global_batch_size)
    except ValueError as err:
        raise RunConfigError(str(err)) from None
    log.info("%s", partitioner.describe())

    # -- inputs (a missing data path fails here, before anything is written) -------------------------------
    if host_batch % num_microbatches and num_microbatches > 1:
        raise RunConfigError(f"per-host batch {host_batch} not divisible by num_microbatches {num_microbatches}")
    data_shards = num_data_shards or num_shards
    per_host = data_shards // num_shards
    if data_shards % num_shards or host_batch % per_host:
        raise RunConfigError(f"train.num_data_shards={data_shards} must be a multiple of the {num_shards} hosts "
                             f"and divide their batch of {host_batch}")
    make_input = input_fn or _default_input_fn()
    common = {"feature_lengths": dict(feature_lengths), "pack": pack}
    from ankh_jax.data.input_pipeline import HostInput

    train_iter = HostInput([
        make_input(task_name, "train", seed=data_seed, shuffle=True, repeat=True, batch_size=host_batch // per_host,
                   shard_id=shard_id * per_host + j, num_shards=data_shards, **common) for j in range(per_host)])
    common.update(batch_size=host_batch, shard_id=shard_id, num_shards=num_shards)
    eval_factory = None
    if eval_every_steps:
        eval_task = eval_task_name or task_name

        def eval_factory():
            return make_input(eval_task, eval_split, seed=data_seed, shuffle=False, repeat=False, **common)
        _first_batch(eval_factory(), f"task {eval_task!r} split {eval_split!r}")  # fails early if missing

    # -- state ----------------------------------------------------------------------------------------------
    run_dir.check_model_dir_config(model_dir, model_config)
    # What MODEL_DIR holds, as process 0 sees it before anyone writes, so every host takes the same branches.
    exists, has_checkpoints = run_dir.agreed(*run_dir.model_dir_state(model_dir))
    # The lock is taken here if MODEL_DIR exists (restoring may move checkpoints aside), else at the first write.
    locked = exists
    lock = run_dir.lock_model_dir(model_dir) if locked else None
    checkpointer = None
    try:
        if has_checkpoints:
            checkpointer = ckpt_lib.Checkpointer(model_dir, save_interval_steps=checkpoint_every_steps,
                                                 max_to_keep=keep_checkpoints, async_save=async_checkpoints)
            abstract = program.layout.abstract_state()
            restored = checkpointer.restore_latest(abstract.params, abstract.opt_state, report=run_dir.warn)
        else:
            restored = None
        if restored is not None:
            state = TrainState(step=jax.device_put(np.int32(restored.step), partitioner.replicated()),
                               params=restored.params, opt_state=restored.opt_state)
            start_step = restored.step
            run_dir.restore_input_position(train_iter, restored.input_states, shard_id * per_host, restored.num_processes)
            run_dir.info(f"resumed from the checkpoint at step {start_step} in {checkpointer.directory}")
        elif init_from_hf:
            state = program.layout.from_params(_load_hf_params(init_from_hf, model_config))
            start_step = 0
            run_dir.info(f"initialised from the HuggingFace model in {init_from_hf}")
        else:
            state = program.layout.create(jax.random.key(seed))
            start_step = 0
        pending = _first_batch(train_iter, f"task {task_name!r} split 'train'")
        if start_step >= num_train_steps:
            run_dir.info(f"nothing to do: the checkpoint is at step {start_step} >= num_train_steps {num_train_steps}")
            run_dir.print_summary(model_dir, start_step)
            return TrainResult(start_step, state.params, "finished", {}, None)

        # -- first writes -------------------------------------------------------------------------------------
        if not locked:
            lock, locked = run_dir.lock_model_dir(model_dir), True
        ckpt_lib.write_model_config(model_dir, model_config)
        run_dir.write_operative_config(model_dir)
        if checkpointer is None:
            checkpointer = ckpt_lib.Checkpointer(model_dir, save_interval_steps=checkpoint_every_steps,
                                                 max_to_keep=keep_checkpoints, async_save=async_checkpoints)
        loop = _Loop(program, checkpointer, train_iter, eval_factory, eval_every_steps, eval_steps,
                     log_every_steps, num_train_steps, global_batch_size, peak_flops_per_device, seed,
                     model_dir if draw_plots and jax.process_index() == 0 else None)
        writer = MetricsWriter(model_dir, total_steps=num_train_steps, start_step=start_step, progress=progress_bar)
        writer.write_text("config", gin_config_markdown(gin.operative_config_str()), start_step)  # as config.gin
        result = loop.run(state, start_step, pending, writer)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        if lock is not None:
            lock.release()
    if result.stopped_by == "finished":
        run_dir.print_summary(model_dir, result.step)
    return result


def _check_run_config(**values: int | None) -> None:
    """The loop's own bindings, each error one line naming its ``train.*`` binding (and the pretrain configs'
    macro where there is one)."""
    macros = {"num_train_steps": " (TRAIN_STEPS)", "global_batch_size": " (BATCH_SIZE)"}
    minimum = {"num_train_steps": 1, "global_batch_size": 1, "log_every_steps": 1, "checkpoint_every_steps": 1,
               "keep_checkpoints": 1, "eval_every_steps": 0, "eval_steps": 1, "num_microbatches": 1}
    for name, low in minimum.items():
        value = values[name]
        if value is None and name == "eval_steps":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            what = "positive" if low else "0 (no eval) or positive"
            raise RunConfigError(f"train.{name}{macros.get(name, '')} must be an integer, {what}; got {value!r}")
    if values["global_batch_size"] % values["num_microbatches"]:
        raise RunConfigError(f"train.global_batch_size (BATCH_SIZE) = {values['global_batch_size']} is not divisible "
                             f"by train.num_microbatches = {values['num_microbatches']}")


def _check_sentinels(feature_lengths: Mapping[str, int]) -> None:
    """Span corruption of a full-length crop must fit Ankh's 116 sentinels (checked here, before any data is read,
    with the gin bindings' knobs)."""
    from ankh_jax.data import span_corruption

    inputs_length = dict(feature_lengths).get("inputs")
    if inputs_length is None:
        return
    knobs = span_corruption.effective_knobs()
    try:
        span_corruption.check_sentinel_budget(inputs_length, knobs["noise_density"], knobs["mean_noise_span_length"],
                                              knobs["merge_adjacent_spans"])
    except ValueError as err:
        raise RunConfigError(f"train.feature_lengths['inputs'] (INPUTS_LENGTH) = {inputs_length} with "
                             f"span_corruption.noise_density / mean_noise_span_length: {err}") from None


class _Loop:
    """One jitted step per batch; metrics, checkpoints, eval and preemption at step boundaries."""

    def __init__(self, program: TrainProgram, checkpointer, train_iter, eval_factory, eval_every_steps: int,
                 eval_steps: int | None, log_every_steps: int, num_train_steps: int, global_batch_size: int,
                 peak_flops_per_device: float | None, seed: int, plots_dir: str | None):
        self.program, self.checkpointer, self.train_iter = program, checkpointer, train_iter
        self.eval_factory, self.eval_every_steps, self.eval_steps = eval_factory, eval_every_steps, eval_steps
        self.log_every_steps, self.num_train_steps = log_every_steps, num_train_steps
        self.global_batch_size = global_batch_size
        self.peak, self.peak_source = flops_lib.peak_flops_per_device(override=peak_flops_per_device)
        self.total_peak = self.peak if jax.devices()[0].platform == "cpu" else self.peak * jax.device_count()
        self.rng = jax.random.key(seed + 1)
        self.plots_dir = plots_dir

    def run(self, state: TrainState, step: int, pending: dict, writer: MetricsWriter) -> TrainResult:
        program, checkpointer = self.program, self.checkpointer
        writer.log_line(f"{program.partitioner.describe()}\npeak for MFU: {self.peak / 1e12:.3g} TFLOP/s per "
                        f"device ({self.peak_source})")
        watcher = ckpt_lib.PreemptionWatcher()
        timer, acc = Timer(), TrainMetricsAccumulator()
        last_train: dict = {}
        last_eval = None
        stopped_by = "finished"
        flops_per_step = None
        first = step + 1  # this run's first step compiles: rates leave it out
        try:
            while step < self.num_train_steps:
                started = time.perf_counter()
                local, pending = (pending, None) if pending is not None else (next(self.train_iter), None)
                if flops_per_step is None:
                    flops_per_step = flops_lib.train_step_flops(
                        program.config, self.global_batch_size, local["encoder_input_tokens"].shape[1],
                        local["decoder_target_tokens"].shape[1])
                state, metrics = program.train_step(state, program.partitioner.make_global_batch(local), self.rng)
                metrics = jax.device_get(metrics)
                step += 1
                if not bool(metrics["finite"]):
                    raise NonFiniteLossError(
                        f"step {step}: loss is {_ratio(metrics['loss_sum'], metrics['weight_sum'])} and grad norm "
                        f"{float(metrics['grad_norm'])}; stopped without saving. The last good checkpoint is "
                        f"{_last_step(checkpointer)} in {checkpointer.directory}. Lower the learning rate, enable "
                        f"z_loss, or check the data near this step.")
                acc.add(metrics)
                # Rates count training steps only (input + step), never eval or checkpoint time; the first step
                # compiles and is left out.
                timer.add(float(metrics["weight_sum"]), time.perf_counter() - started, count=step != first)
                writer.advance(1, loss=f"{_ratio(metrics['loss_sum'], metrics['weight_sum']):.4f}")
                if step % self.log_every_steps == 0 or step == self.num_train_steps:
                    last_train = self._log(writer, step, acc, timer, flops_per_step)
                    acc = TrainMetricsAccumulator()
                    timer.reset()
                preempted = watcher.reached(step)
                if checkpointer.should_save(step) or step == self.num_train_steps or preempted:
                    checkpointer.save(step, state.params, state.opt_state, self._all_input_states())
                if self.eval_factory is not None and (step % self.eval_every_steps == 0
                                                      or step == self.num_train_steps):
                    last_eval = evaluate(program, state.params, self.eval_factory(), self.eval_steps)
                    writer.write(step, "eval", last_eval)
                    writer.log_line(f"step {step} eval: loss {last_eval['loss']:.4f}  acc {last_eval['accuracy']:.4f}"
                                    f"  ({last_eval['target_tokens']:.0f} target tokens)")
                if self.plots_dir and (checkpointer.should_save(step) or step == self.num_train_steps or preempted):
                    from ankh_jax.plots.training import draw_training_plots  # matplotlib only when drawing

                    draw_training_plots(self.plots_dir)
                if preempted:
                    stopped_by = "preempted"
                    checkpointer.wait()
                    writer.log_line(f"preemption signal: saved the checkpoint at step {step} and stopped")
                    break
        finally:
            watcher.close()
            writer.close()
        return TrainResult(step, state.params, stopped_by, last_train, last_eval)

    def _all_input_states(self) -> list[dict]:
        """Every data shard's position, in shard order (a collective: all hosts call it at the same step)."""
        per_host = ckpt_lib.gather_json(self.train_iter.get_state())
        return sorted((s for states in per_host for s in states), key=lambda s: s["config"]["shard_id"])

    def _log(self, writer: MetricsWriter, step: int, acc: TrainMetricsAccumulator, timer: Timer, flops_per_step) -> dict:
        summary = acc.summary()
        busy, wall = timer.busy_seconds(), timer.wall_seconds()
        steps_per_s = timer.steps / busy if timer.steps else 0.0
        row = dict(summary, steps_per_s=steps_per_s,
                   target_tokens_per_s=timer.tokens / busy if timer.steps else 0.0,
                   mfu=(flops_per_step * steps_per_s / self.total_peak) if timer.steps else 0.0,
                   wall_steps_per_s=acc.steps / wall)
        writer.write(step, "train", row)
        writer.log_line(f"step {step}/{self.num_train_steps}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
                        f"lr {row['learning_rate']:.3g}  |g| {row['grad_norm']:.3g}  {steps_per_s:.2f} steps/s  "
                        f"{row['target_tokens_per_s']:.0f} tgt tok/s  MFU {100 * row['mfu']:.1f}%  "
                        f"ETA {writer.eta(step, row['wall_steps_per_s'])}")
        return summary


def _load_hf_params(path: str, config) -> Any:
    from ankh_jax.io.loading import load  # the one load path: verified, normalised once into the run's layout

    hf_config, params = load(path, scan_layers=config.scan_layers)
    diffs = {f: (getattr(hf_config, f), getattr(config, f)) for f in run_dir.ARCH_FIELDS
             if getattr(hf_config, f) != getattr(config, f)}
    if diffs:
        detail = ", ".join(f"{k}: HF {a} vs gin {b}" for k, (a, b) in diffs.items())
        raise ValueError(f"init_from_hf={path}: the HuggingFace model does not match MODEL_CONFIG ({detail}); "
                         "use the model gin file that matches it")
    return params


def _ratio(a, b) -> float:
    return float(a) / max(float(b), 1.0)


def _last_step(checkpointer) -> str:
    steps = checkpointer.all_steps()
    return f"step {steps[-1]}" if steps else "none (no checkpoint yet)"
