"""The head-training loop shared by every mode: AdamW with warmup, accumulation, early stopping, best checkpoint.

The model is described by a ``forward(trainable, frozen, batch, rng, deterministic) -> logits`` function; only
``trainable`` gets gradients (head; head + encoder; head + LoRA adapters). Each epoch ends with an evaluation on the
validation split; the best ``trainable`` (by the task's first metric) is saved with orbax under
``MODEL_DIR/best`` and restored at the end. ``MODEL_DIR/metrics.jsonl`` gets one JSON row per log step and per
evaluation.

A killed run loses at most the epoch it was in: after each epoch the whole training state (``trainable``, the
optimizer state, both random generators, the early-stopping counters) is saved under ``MODEL_DIR/last_epoch``,
and :func:`train` continues from there, with the same batches and dropout masks as an uninterrupted run.
``best/`` is replaced by a rename, never deleted first, so a kill leaves the old or the new one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ankh_jax.downstream import batching, run_records
from ankh_jax.downstream.kinds import LabelKind
from ankh_jax.downstream.task_spec import Examples
from ankh_jax.training import optim
from ankh_jax.training.metrics import MetricsWriter

SCHEDULES = ("constant", "linear", "cosine")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW; ``learning_rate`` after ``warmup_steps`` of linear warmup, then ``schedule`` (constant | linear |
    cosine decay to 0 at the last step). Defaults: the Ankh notebooks' lr 1e-3 (their 1000 warmup steps assume
    batch 1 x 16 accumulation; warmup here is capped at a tenth of the run)."""

    learning_rate: float = 1e-3
    warmup_steps: int = 1000
    schedule: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1         # batches per update (the update is their mean gradient)
    encoder_learning_rate: float | None = None  # full mode: encoder LR (default: learning_rate)

    def learning_rate_schedule(self, total_steps: int, peak: float | None = None) -> optax.Schedule:
        """Linear warmup from 0 over ``warmup_steps`` (at most a tenth of ``total_steps``) to ``peak`` (default
        ``learning_rate``), then ``schedule``: ``training.optim.make_schedule`` with every argument given."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}; expected {' | '.join(SCHEDULES)}")
        return optim.make_schedule(peak_learning_rate=self.learning_rate if peak is None else peak,
                                   warmup_steps=max(0, min(self.warmup_steps, total_steps // 10)),
                                   total_steps=total_steps, decay=self.schedule, end_learning_rate=0.0,
                                   init_learning_rate=0.0)

    def build(self, total_steps: int, trainable: dict) -> tuple[optax.GradientTransformation, optax.Schedule]:
        """``(optimizer, schedule)``: AdamW after global-norm clipping (``training.optim.make_optimizer``), the
        encoder on its own schedule when ``encoder_learning_rate`` is set, updates every ``grad_accum_steps``
        batches. ``total_steps`` counts optimizer updates."""
        schedule = self.learning_rate_schedule(total_steps)
        schedules, labels = {"rest": schedule}, None
        if self.encoder_learning_rate is not None and "encoder" in trainable:
            schedules = {"encoder": self.learning_rate_schedule(total_steps, self.encoder_learning_rate),
                         "rest": schedule}
            labels = {k: ("encoder" if k == "encoder" else "rest") for k in trainable}
        tx = optim.make_grouped_optimizer(
            schedules, labels, accumulate_steps=self.grad_accum_steps, name="adamw",
            clip_grad_norm=self.max_grad_norm, weight_decay=self.weight_decay, adam_b1=0.9, adam_b2=0.999,
            adam_eps=1e-8)
        return tx, schedule


@gin.configurable
@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """How examples become batches, in training and evaluation: ``batch_size`` sequences per batch, fewer in
    long buckets when rows x bucket length would exceed ``max_tokens``."""

    batch_size: int = 16
    max_tokens: int | None = 8192


@gin.configurable
@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    """When training ends: after ``max_epochs``, or earlier after ``patience`` epochs without a better validation
    metric (early stopping)."""

    max_epochs: int = 5
    patience: int = 3


class EpochCheckpoints:
    """The training state after the latest finished epoch, ``MODEL_DIR/last_epoch/<epoch>`` (orbax writes a step
    to a temporary directory and renames it when complete; the previous one is deleted only after that)."""

    def __init__(self, model_dir: str):
        self.directory = os.path.abspath(os.path.join(model_dir, run_records.EPOCH_STATE_DIR))
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, trainable, opt_state, meta: dict) -> None:
        state = {"trainable": trainable, "opt_state": opt_state}
        self.manager.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def restore_latest(self, trainable, opt_state) -> tuple[dict, object, dict] | None:
        epoch = self.manager.latest_step()
        if epoch is None:
            return None
        target = jax.tree_util.tree_map(np.asarray, {"trainable": trainable, "opt_state": opt_state})
        try:
            restored = self.manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as err:  # noqa: BLE001 - any failure to read it means the same to the user
            raise ValueError(f"{self.directory}/{epoch}: the saved training state is unreadable "
                             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); delete "
                             f"{self.directory} to train again from the start") from None
        return restored.state["trainable"], restored.state["opt_state"], restored.meta

    def close(self) -> None:
        self.manager.close()


def replace_checkpoint(checkpointer: ocp.StandardCheckpointer, path: str, tree) -> None:
    """Saves ``tree`` at ``path``: written beside it, then swapped in by renames (see :func:`recover_checkpoint`)."""
    new, old = path + ".new", path + ".old"
    if os.path.exists(new):
        shutil.rmtree(new)
    checkpointer.save(new, tree)
    checkpointer.wait_until_finished()
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(path: str) -> None:
    """Undoes a :func:`replace_checkpoint` cut short: the old checkpoint back if the new one is not in place."""
    new, old = path + ".new", path + ".old"
    if not os.path.exists(path) and os.path.exists(old):
        os.rename(old, path)
    for leftover in (new, old):
        if os.path.exists(leftover):
            shutil.rmtree(leftover)


@dataclasses.dataclass
class FineTuneResult:
    """What :func:`train` returns: the best ``trainable`` by validation and how the run went. Not the pretraining
    loop's ``TrainResult`` (the last step's params and why it stopped): fine-tuning keeps the best epoch, not the
    last, and stops on patience, so the two results hold different things."""

    trainable: dict
    best_metrics: dict
    best_epoch: int
    epochs_run: int
    steps: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class BatchSource:
    """What turns a split into batches: the label kind, the batching settings, the embeddings (frozen mode; None:
    token ids, the encoder runs in the step) and the label shapes' parameters."""

    kind: LabelKind
    batching: BatchingConfig
    embeddings: Callable[[str], np.ndarray] | None = None
    num_classes: int | None = None
    min_separation: int = 6

    def batches(self, examples: Examples, shuffle_rng: np.random.Generator | None = None):
        return batching.make_batches(examples, self.kind, batch_size=self.batching.batch_size,
                                     embeddings=self.embeddings, num_classes=self.num_classes,
                                     shuffle_rng=shuffle_rng, max_tokens=self.batching.max_tokens,
                                     min_separation=self.min_separation)


def predict(forward: Callable, trainable, frozen, examples: Examples, source: BatchSource) -> list:
    """Per-example outputs (the label kind's ``outputs``) in the order of ``examples``."""
    step = _eval_step(forward)
    out: list = [None] * len(examples.sequences)
    for idx, batch in source.batches(examples):
        logits = np.asarray(step(trainable, frozen, batch))
        lengths = [int(batch["mask"][r].sum()) for r in range(len(idx))]
        for i, o in zip(idx, source.kind.outputs(logits, lengths), strict=True):
            out[i] = o
    return out


_EVAL_STEPS: dict = {}


def _eval_step(forward):
    if forward not in _EVAL_STEPS:
        _EVAL_STEPS[forward] = jax.jit(lambda t, f, b: forward(t, f, b, None, True))
    return _EVAL_STEPS[forward]


def evaluate(forward, trainable, frozen, examples: Examples, source: BatchSource) -> dict[str, float]:
    return source.kind.score_outputs(predict(forward, trainable, frozen, examples, source), examples.labels)


@dataclasses.dataclass
class _LoopState:
    """Where training stands: what an epoch's end saves (``last_epoch/``) and a resumed run restores."""

    trainable: Any
    opt_state: Any
    key: Any                          # the dropout key
    step: int = 0
    epoch: int = 0
    best: dict | None = None
    best_epoch: int = -1
    bad_epochs: int = 0
    done: bool = False

    def meta(self, rng_np: np.random.Generator) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "done": self.done, "numpy_rng": rng_np.bit_generator.state,
                "key": np.asarray(jax.random.key_data(self.key)).tolist()}

    def restore(self, meta: dict, rng_np: np.random.Generator) -> None:
        self.epoch, self.step, self.best, self.best_epoch = meta["epoch"], meta["step"], meta["best"], \
            meta["best_epoch"]
        self.bad_epochs, self.done = meta["bad_epochs"], meta["done"]
        rng_np.bit_generator.state = meta["numpy_rng"]
        self.key = jax.random.wrap_key_data(np.asarray(meta["key"], np.uint32))


def _make_train_step(forward: Callable, loss_fn: Callable, tx: optax.GradientTransformation):
    def loss_of(t, f, batch, rng):
        return loss_fn(forward(t, f, batch, rng, False), batch)

    @jax.jit
    def train_step(t, opt, f, batch, rng):
        loss, grads = jax.value_and_grad(loss_of)(t, f, batch, rng)
        updates, opt = tx.update(grads, opt, t)
        return optax.apply_updates(t, updates), opt, loss, optax.global_norm(grads)

    return train_step


def _train_epoch(train_step, state: _LoopState, frozen, batches, *, learning_rate: Callable[[int], float],
                 log_every: int, mlog: MetricsWriter) -> None:
    """One pass over ``batches``; a row in ``metrics.jsonl`` every ``log_every`` steps (and the first)."""
    t_epoch, first_step = time.perf_counter(), state.step
    for _, batch in batches:
        state.key, sub = jax.random.split(state.key)
        state.trainable, state.opt_state, loss, gnorm = train_step(state.trainable, state.opt_state, frozen,
                                                                   batch, sub)
        state.step += 1
        if state.step % log_every == 0 or state.step == 1:
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {state.step} (epoch {state.epoch + 1})")
            rate = (state.step - first_step) / (time.perf_counter() - t_epoch)
            mlog.write_row({"step": state.step, "epoch": state.epoch + 1, "loss": loss, "grad_norm": float(gnorm),
                            "learning_rate": learning_rate(state.step), "steps_per_s": rate})
            mlog.advance(1, loss=f"{loss:.4f}")
        else:
            mlog.advance(1)


def train(forward: Callable, trainable, frozen, train_set: Examples, valid_set: Examples, *, source: BatchSource,
          optimizer: OptimizerConfig, stopping: StoppingConfig, model_dir: str, seed: int = 0, log_every: int = 20,
          progress: bool = True, log=print) -> FineTuneResult:
    """Trains ``trainable`` and returns the best one (by validation). Continues after the epoch saved in
    ``MODEL_DIR/last_epoch`` when there is one (the caller checks it belongs to the same run), and keeps the
    rows of ``metrics.jsonl`` up to that epoch only."""
    steps_per_epoch = batching.count_batches(train_set, batch_size=source.batching.batch_size,
                                             max_tokens=source.batching.max_tokens)
    tx, schedule = optimizer.build(max(1, steps_per_epoch * stopping.max_epochs // optimizer.grad_accum_steps),
                                   trainable)
    train_step = _make_train_step(forward, source.kind.loss, tx)
    best_dir = os.path.abspath(os.path.join(model_dir, run_records.BEST_DIR))
    checkpointer = ocp.StandardCheckpointer()
    epochs = EpochCheckpoints(model_dir)
    rng_np = np.random.default_rng(seed)
    state = _LoopState(trainable, tx.init(trainable), jax.random.key(seed))
    saved = epochs.restore_latest(state.trainable, state.opt_state)
    recover_checkpoint(best_dir)
    if saved is not None:
        state.trainable, state.opt_state = jax.tree_util.tree_map(jnp.asarray, saved[:2])
        state.restore(saved[2], rng_np)
        if state.best_epoch == state.epoch:  # best/ may not have been replaced yet when the run died
            replace_checkpoint(checkpointer, best_dir, state.trainable)
        log(f"resuming after epoch {state.epoch} (step {state.step}) from {epochs.directory}")
    # Rows after the restored step are the epoch that was cut short (and maybe a partial line): dropped.
    mlog = MetricsWriter(model_dir, total_steps=steps_per_epoch * stopping.max_epochs, start_step=state.step,
                         tensorboard=False, progress=progress, progress_desc="train")
    start = time.perf_counter()
    try:
        while state.epoch < stopping.max_epochs and not state.done:
            t_epoch = time.perf_counter()
            _train_epoch(train_step, state, frozen, source.batches(train_set, rng_np), log_every=log_every,
                         mlog=mlog, learning_rate=lambda step: float(schedule(step // optimizer.grad_accum_steps)))
            state.epoch += 1
            scores = evaluate(forward, state.trainable, frozen, valid_set, source)
            improved = state.best is None or next(iter(scores.values())) > next(iter(state.best.values()))
            mlog.write_row({"step": state.step, "epoch": state.epoch, "split": "valid", **scores,
                            "best": improved, "epoch_seconds": time.perf_counter() - t_epoch})
            log(f"epoch {state.epoch}: valid " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
                + (" (best)" if improved else ""))
            if improved:
                state.best, state.best_epoch, state.bad_epochs = scores, state.epoch, 0
            else:
                state.bad_epochs += 1
                state.done = state.bad_epochs >= stopping.patience
            epochs.save(state.epoch, state.trainable, state.opt_state, state.meta(rng_np))
            if improved:
                replace_checkpoint(checkpointer, best_dir, state.trainable)
            if state.done:
                log(f"early stopping: no better validation {next(iter(scores))} for {state.bad_epochs} epochs")
    finally:
        mlog.close()
        epochs.close()
    restored = checkpointer.restore(best_dir, target=jax.tree_util.tree_map(np.asarray, state.trainable))
    checkpointer.close()
    return FineTuneResult(jax.tree_util.tree_map(jnp.asarray, restored), state.best, state.best_epoch, state.epoch,
                          state.step, time.perf_counter() - start)
