"""The steps of a pretraining run, without a host stall: the host dispatches step after step and syncs with the
devices only where it must, at the steps :func:`~ankh_jax.training.run_config.itstime` names:

* log steps: the metrics accumulated on the devices are fetched, checked for a NaN/inf loss (the run stops naming
  the first bad step, at most ``log_every_steps`` steps later, exit status 3), written and shown;
* checkpoint steps (and a preemption signal): the same check first, so a non-finite state is never saved;
* eval steps, and the last step.

The first step of a run compiles; the loop waits for it once, so the rates leave it out.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax

from ankh_jax.io import checkpoints as ckpt_lib
from ankh_jax.training import flops as flops_lib
from ankh_jax.training import run_dir
from ankh_jax.training.metrics import MetricsWriter, Timer, TrainMetricsAccumulator
from ankh_jax.training.preemption import PreemptionWatcher
from ankh_jax.training.program import TrainProgram, evaluate
from ankh_jax.training.run_config import CheckpointConfig, EvalConfig, LoopConfig, itstime
from ankh_jax.training.steps import TrainState


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/inf; the run stopped without saving."""


@dataclasses.dataclass
class TrainResult:
    step: int
    params: Any
    stopped_by: str  # "finished" | "preempted"
    last_train_metrics: dict
    last_eval_metrics: dict | None


@dataclasses.dataclass
class RunInputs:
    """The host's training iterator, and a factory of fresh validation iterators (None: no eval)."""

    train: Any
    eval_factory: Any
    global_batch_size: int
    task_name: str


class StepLoop:
    """One jitted step per batch; metrics, checkpoints, eval, profile and preemption at the steps that ask."""

    def __init__(self, program: TrainProgram, checkpointer, inputs: RunInputs, loop: LoopConfig,
                 checkpointing: CheckpointConfig, evaluation: EvalConfig, model_dir: str):
        self.program, self.checkpointer, self.inputs = program, checkpointer, inputs
        self.loop, self.checkpointing, self.evaluation, self.model_dir = loop, checkpointing, evaluation, model_dir
        self.peak, self.peak_source = flops_lib.peak_flops_per_device(override=loop.peak_flops_per_device)
        self.total_peak = self.peak if jax.devices()[0].platform == "cpu" else self.peak * jax.device_count()
        self.rng = jax.random.key(loop.seed + 1)
        self.acc, self.timer = TrainMetricsAccumulator(), Timer()
        self.flops_per_step = None
        self.last_train: dict = {}
        self.last_eval: dict | None = None

    def run(self, state: TrainState, step: int, pending: dict, writer: MetricsWriter) -> TrainResult:
        writer.log_line(f"{self.program.partitioner.describe()}\npeak for MFU: {self.peak / 1e12:.3g} TFLOP/s per "
                        f"device ({self.peak_source})")
        watcher, profile = PreemptionWatcher(), _Profile(self.loop.profile_steps, self.model_dir)
        first, last, stopped_by = step + 1, self.loop.num_train_steps, "finished"
        try:
            while step < last:
                local, pending = (pending, None) if pending is not None else (next(self.inputs.train), None)
                self._count_flops(local)
                profile.before(step + 1)
                state, metrics = self.program.train_step(state, self.program.partitioner.make_global_batch(local),
                                                         self.rng)
                self.acc.add(metrics)
                step += 1
                writer.advance(1)
                if step == first:  # compiled and ran once: time from here
                    jax.block_until_ready(metrics)
                    self.timer.restart()
                else:
                    self.timer.step()
                profile.after(step, state)
                if self._boundary(step, state, watcher, writer):
                    stopped_by = "preempted"
                    self.checkpointer.wait()
                    writer.log_line(f"preemption signal: saved the checkpoint at step {step} and stopped")
                    break
        finally:
            profile.stop()
            watcher.close()
            writer.close()
        return TrainResult(step, state.params, stopped_by, self.last_train, self.last_eval)

    def _count_flops(self, local: dict) -> None:
        if self.flops_per_step is None:
            self.flops_per_step = flops_lib.train_step_flops(
                self.program.config, self.inputs.global_batch_size, local["encoder_input_tokens"].shape[1],
                local["decoder_target_tokens"].shape[1])

    def _boundary(self, step: int, state: TrainState, watcher, writer: MetricsWriter) -> bool:
        """Whatever falls on ``step``, the only place the host waits for the devices; True on a preemption."""
        last = self.loop.num_train_steps
        log = itstime(step, self.loop.log_every_steps, last)
        if log:
            host = self.acc.fetch()
            self._check_finite(host, step)
            self.last_train = self._log(writer, step, host)
            self.acc.reset()
            self.timer.restart()
        preempted = watcher.reached(step)
        save = itstime(step, self.checkpointing.every_steps, last) or preempted
        evaluate_now = self.inputs.eval_factory is not None and itstime(step, self.evaluation.every_steps, last)
        if not (save or evaluate_now):
            return preempted
        if not log:
            self._check_finite(self.acc.fetch(), step)
        started = time.perf_counter()
        if save:
            self.checkpointer.save(step, state.params, state.opt_state, self._all_input_states())
        if evaluate_now:
            self.last_eval = evaluate(self.program, state.params, self.inputs.eval_factory(), self.evaluation.steps)
            writer.write(step, "eval", self.last_eval)
            writer.log_line(f"step {step} eval: loss {self.last_eval['loss']:.4f}  acc "
                            f"{self.last_eval['accuracy']:.4f}  ({self.last_eval['target_tokens']:.0f} target tokens)")
        if save and self.loop.draw_plots and jax.process_index() == 0:
            from ankh_jax.plots.training import draw_training_plots  # matplotlib only when drawing

            draw_training_plots(self.model_dir)
        self.timer.exclude(time.perf_counter() - started)
        return preempted

    def _check_finite(self, host: dict, step: int) -> None:
        bad = int(host.get("first_bad_step", -1))
        if bad < 0:
            return
        later = f" (checked at step {step}: every LoopConfig.log_every_steps and before saving)" if bad != step else ""
        raise NonFiniteLossError(
            f"step {bad}: loss is {host['bad_loss']} and grad norm {host['bad_grad_norm']}{later}; stopped without "
            f"saving. The last good checkpoint is {_last_step(self.checkpointer)} in {self.checkpointer.directory}. "
            "Lower the learning rate, enable z_loss, or check the data near this step.")

    def _all_input_states(self) -> list[dict]:
        """Every data shard's position, in shard order (a collective: all hosts call it at the same step)."""
        per_host = ckpt_lib.gather_json(self.inputs.train.get_state())
        return sorted((s for states in per_host for s in states), key=lambda s: s["config"]["shard_id"])

    def _log(self, writer: MetricsWriter, step: int, host: dict) -> dict:
        summary = TrainMetricsAccumulator.summary(host)
        timer = self.timer
        steps_per_s = timer.steps / timer.busy_seconds() if timer.steps else 0.0
        per_step = lambda key: host[key] / max(host["steps"], 1)
        row = dict(summary, steps_per_s=steps_per_s,
                   target_tokens_per_s=per_step("weight_sum") * steps_per_s,
                   nonpad_tokens_per_s=(per_step("input_nonpad") + per_step("target_nonpad")) * steps_per_s,
                   mfu=(self.flops_per_step * steps_per_s / self.total_peak) if timer.steps else 0.0,
                   wall_steps_per_s=host["steps"] / timer.wall_seconds())
        writer.write(step, "train", row)
        writer.advance(0, loss=f"{row['loss']:.4f}")
        writer.log_line(f"step {step}/{self.loop.num_train_steps}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
                        f"lr {row['learning_rate']:.3g}  |g| {row['grad_norm']:.3g}  {steps_per_s:.2f} steps/s  "
                        f"{row['target_tokens_per_s']:.0f} tgt tok/s  fill {row['input_fill']:.2f}/"
                        f"{row['target_fill']:.2f}  MFU {100 * row['mfu']:.1f}%  "
                        f"ETA {writer.eta(step, row['wall_steps_per_s'])}")
        return summary


class _Profile:
    """A ``jax.profiler`` trace of steps ``start..end`` into MODEL_DIR's TensorBoard folder, where TensorBoard's
    Profile tab (the ``tensorboard-plugin-profile`` package) finds it."""

    def __init__(self, steps: tuple[int, int] | None, model_dir: str):
        self.start, self.end = steps if steps else (None, None)
        self.model_dir, self.active = model_dir, False
        self._mirror = None

    def before(self, step: int) -> None:
        if step == self.start:
            self._mirror = run_dir.profile_mirror(self.model_dir)
            jax.profiler.start_trace(self._mirror.directory)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step >= self.end:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            self._mirror.close()  # uploads the trace when MODEL_DIR is on gs://
            run_dir.info(f"profile of steps {self.start}..{self.end}: {self._mirror.destination}")


def _last_step(checkpointer) -> str:
    steps = checkpointer.all_steps()
    return f"step {steps[-1]}" if steps else "none (no checkpoint yet)"
