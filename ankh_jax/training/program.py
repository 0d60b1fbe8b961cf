"""The trainer's program for one configuration: model, optimizer, state layout, jitted train and eval steps.

Built once, here, and used both by the training loop (:mod:`ankh_jax.training.loop`) and by ``scripts/plan_memory.py``,
which lowers and compiles exactly this train step for a target (a CPU-simulated mesh or XLA:TPU for a TPU
topology) instead of rebuilding its own: what the plan measures is what the trainer runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ankh_jax.training.optim import make_optimizer, make_schedule
from ankh_jax.training.partitioning import Partitioner
from ankh_jax.training.steps import StateLayout, jit_train_step, make_eval_step, make_train_step


@dataclasses.dataclass
class TrainProgram:
    config: Any  # T5Config
    partitioner: Partitioner
    model: Any
    schedule: Callable
    tx: Any
    layout: StateLayout
    train_step: Callable  # (state, global batch, rng) -> (state, metrics); ``.jitted`` is the jax.jit object
    eval_step: Callable   # (params, global batch) -> loss/accuracy sums

    def abstract_batch(self, global_batch_size: int, inputs_length: int, targets_length: int) -> dict:
        """The global batch as ``jax.ShapeDtypeStruct``s with the batch sharding (for lowering without data)."""
        p = self.partitioner
        shapes = {"encoder_input_tokens": (inputs_length, jnp.int32),
                  "decoder_input_tokens": (targets_length, jnp.int32),
                  "decoder_target_tokens": (targets_length, jnp.int32),
                  "decoder_loss_weights": (targets_length, jnp.float32)}
        return {k: jax.ShapeDtypeStruct((global_batch_size, n), dtype, sharding=p.batch_sharding())
                for k, (n, dtype) in shapes.items()}

    def lower_train_step(self, global_batch_size: int, inputs_length: int, targets_length: int):
        """``jax.stages.Lowered`` of the train step on abstract state, batch and rng key (no arrays anywhere)."""
        key = jax.eval_shape(lambda: jax.random.key(0))
        rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=self.partitioner.replicated())
        batch = self.abstract_batch(global_batch_size, inputs_length, targets_length)
        with self.partitioner.activate():
            return self.train_step.jitted.lower(self.layout.abstract_state(), batch, rng)


def build_program(model_config, partitioner: Partitioner, *, num_microbatches: int = 1,
                  label_smoothing: float = 0.0, z_loss: float = 0.0) -> TrainProgram:
    """The program ``train()`` runs; the optimizer and schedule come from gin (``make_optimizer``/``make_schedule``)."""
    from ankh_jax.model.network import Transformer

    model = Transformer(model_config)
    schedule = make_schedule()
    tx = make_optimizer(schedule)
    layout = StateLayout(model, tx, partitioner)
    step = make_train_step(model, tx, schedule, num_microbatches=num_microbatches, label_smoothing=label_smoothing,
                           z_loss=z_loss, enable_dropout=model_config.dropout_rate > 0)
    return TrainProgram(model_config, partitioner, model, schedule, tx, layout, jit_train_step(step, layout),
                        make_eval_step(model, layout))


def evaluate(program: TrainProgram, params: Any, batches: Iterator[dict], max_batches: int | None) -> dict:
    """Token-weighted loss and accuracy over a validation iterator (at most ``max_batches`` batches).

    On several hosts each reads its own shard and they may run out at different batches: all continue, the
    exhausted ones feeding all-zero batches (loss weight 0), until no host has data, so the collectives match.
    """
    totals = {"loss": 0.0, "correct": 0.0, "weight": 0.0}
    multi_host = jax.process_count() > 1
    n = 0
    template = None
    while max_batches is None or n < max_batches:
        try:
            local = next(batches)
            template, has = local, True
        except StopIteration:
            has = False
        if multi_host:
            from jax.experimental import multihost_utils

            if not bool(np.any(multihost_utils.process_allgather(np.asarray(has)))):
                break
            if not has:
                local = {k: np.zeros_like(v) for k, v in template.items()}
        elif not has:
            break
        sums = jax.device_get(program.eval_step(params, program.partitioner.make_global_batch(local)))
        for k in totals:
            totals[k] += float(sums[k])
        n += 1
    w = max(totals["weight"], 1.0)
    return {"loss": totals["loss"] / w, "accuracy": totals["correct"] / w, "target_tokens": totals["weight"],
            "batches": n}
