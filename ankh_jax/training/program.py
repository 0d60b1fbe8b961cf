"""The trainer's program for one configuration: model, optimizer, state layout, jitted train and eval steps.

Built once, here, and used both by the training loop (:mod:`ankh_jax.training.loop`) and by ``python -m ankh_jax.plan_memory``,
which lowers and compiles exactly this train step for a target (a CPU-simulated mesh or XLA:TPU for a TPU
topology) instead of rebuilding its own: what the plan measures is what the trainer runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ankh_jax.training.optim import make_optimizer, make_schedule
from ankh_jax.training.partitioning import Partitioner
from ankh_jax.training.run_config import ProgramConfig
from ankh_jax.training.steps import (
    StateLayout,
    abstract_boxed_params,
    jit_train_step,
    make_eval_step,
    make_train_step,
)


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

    def abstract_batch(self, global_batch_size: int, inputs_length: int, targets_length: int,
                       packed: bool = False) -> dict:
        """The global batch as ``jax.ShapeDtypeStruct``s with the batch sharding (for lowering without data);
        ``packed`` adds seqio's segment ids and positions, as a packed input pipeline yields them."""
        p = self.partitioner
        shapes = {"encoder_input_tokens": (inputs_length, jnp.int32),
                  "decoder_input_tokens": (targets_length, jnp.int32),
                  "decoder_target_tokens": (targets_length, jnp.int32),
                  "decoder_loss_weights": (targets_length, jnp.float32)}
        if packed:
            for side, n in (("encoder", inputs_length), ("decoder", targets_length)):
                shapes.update({f"{side}_segment_ids": (n, jnp.int32), f"{side}_positions": (n, jnp.int32)})
        return {k: jax.ShapeDtypeStruct((global_batch_size, n), dtype, sharding=p.batch_sharding())
                for k, (n, dtype) in shapes.items()}

    def lower_train_step(self, global_batch_size: int, inputs_length: int, targets_length: int,
                         packed: bool = False):
        """``jax.stages.Lowered`` of the train step on abstract state, batch and rng key (no arrays anywhere)."""
        key = jax.eval_shape(lambda: jax.random.key(0))
        rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=self.partitioner.replicated())
        batch = self.abstract_batch(global_batch_size, inputs_length, targets_length, packed)
        with self.partitioner.activate():
            return self.train_step.jitted.lower(self.layout.abstract_state(), batch, rng)


def build_program(settings: ProgramConfig, partitioner: Partitioner) -> TrainProgram:
    """The program ``train()`` runs and ``plan_memory`` compiles; the optimizer and schedule come from gin
    (``make_optimizer`` / ``make_schedule``), Adafactor factored by the model's logical axes."""
    from ankh_jax.model.network import Transformer

    model = Transformer(settings.model_config)
    schedule = make_schedule()
    boxed = abstract_boxed_params(model, partitioner)
    tx = make_optimizer(schedule, param_axes=(nn.get_partition_spec(boxed), nn.unbox(boxed)))
    layout = StateLayout(model, tx, partitioner, boxed)
    step = make_train_step(model, tx, schedule, num_microbatches=settings.num_microbatches,
                           label_smoothing=settings.label_smoothing, z_loss=settings.z_loss,
                           enable_dropout=settings.model_config.dropout_rate > 0)
    return TrainProgram(settings.model_config, partitioner, model, schedule, tx, layout, jit_train_step(step, layout),
                        make_eval_step(model, layout))


def restore_state(program: TrainProgram, checkpointer, report: Callable[[str], None]):
    """The newest readable checkpoint (``Checkpointer.restore_latest``), its optimizer state in this program's
    layout: a checkpoint whose Adafactor statistics were kept by optax's size rule (written before the logical-axes
    rule, or with ``make_optimizer.adafactor_factored_by = 'size'``) is restored in that layout and converted
    (:func:`ankh_jax.training.adafactor.convert_statistics`), and the conversion is reported."""
    from ankh_jax.io import checkpoints as ckpt_lib
    from ankh_jax.io.tree_shapes import tree_shapes

    abstract = program.layout.abstract_state()
    saved = ckpt_lib.saved_opt_state_shapes(checkpointer)
    legacy = _size_rule_layout(program)
    if (saved is None or legacy is None or saved == tree_shapes(abstract.opt_state)
            or saved != tree_shapes(legacy.abstract_opt_state)):
        return checkpointer.restore_latest(abstract.params, abstract.opt_state, report=report)
    restored = checkpointer.restore_latest(abstract.params, legacy.abstract_state().opt_state, report=report)
    if restored is None:
        return None
    from ankh_jax.training import adafactor

    def convert(node):
        if not isinstance(node, optax.FactoredState):
            return node
        return adafactor.convert_statistics(node, legacy.tx.factor_rules, program.tx.factor_rules,
                                            program.layout.abstract_params)

    with program.partitioner.activate():
        restored.opt_state = jax.jit(
            lambda s: jax.tree_util.tree_map(convert, s, is_leaf=lambda x: isinstance(x, optax.FactoredState)),
            out_shardings=program.layout.opt_shardings)(restored.opt_state)
    report(f"the checkpoint at step {restored.step} keeps Adafactor's second moments as optax's size rule does; "
           "converted them to the logical-axes factors (make_optimizer.adafactor_factored_by = 'size' keeps the old "
           "layout instead)")
    return restored


def _size_rule_layout(program: TrainProgram) -> StateLayout | None:
    """The state layout of this program's optimizer with optax's size rule (None unless that differs)."""
    if getattr(program.tx, "factor_rules", None) is None:
        return None
    layout = program.layout
    tx = make_optimizer(program.schedule, param_axes=(nn.get_partition_spec(layout.boxed), layout.abstract_params),
                        adafactor_factored_by="size")
    return StateLayout(program.model, tx, program.partitioner, layout.boxed)


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
