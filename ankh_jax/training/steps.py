"""The train state, its sharded creation, and the jitted train / eval steps.

Everything here is pure and jit-compiled once: the loop in ``loop.py`` only feeds batches and reads scalars.

* ``StateLayout.create`` builds parameters and optimizer state directly in their final shardings (``jax.jit``
  with ``out_shardings``), so no host or device ever holds a full unsharded copy.
* ``make_train_step`` returns ``step(state, batch, rng) -> (state, metrics)``: optional gradient accumulation over
  micro-batches (a ``lax.scan``), loss = token-weighted mean cross-entropy (+ z-loss), global grad norm, the
  optimizer update, and scalar metrics. The state is donated. Dropout keys are ``fold_in(rng, step)``, so a run
  resumed from a checkpoint draws exactly the same masks.
* ``make_eval_step`` returns loss / accuracy sums for one validation batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ankh_jax.errors import InputError
from ankh_jax.training.losses import cross_entropy_sums
from ankh_jax.training.partitioning import Partitioner, wait_for_all_processes

BATCH_KEYS_REQUIRED = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                       "decoder_loss_weights")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def _model_inputs(batch: dict) -> dict:
    kwargs = {"encoder_input_tokens": batch["encoder_input_tokens"],
              "decoder_input_tokens": batch["decoder_input_tokens"]}
    for key in ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions"):
        if key in batch:
            kwargs[key] = batch[key]
    return kwargs


def abstract_boxed_params(model: nn.Module, partitioner: Partitioner) -> Any:
    rows = partitioner.batch_shards
    tokens = jnp.ones((rows, 8), jnp.int32)
    return jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, tokens, tokens)["params"],
                          jax.random.key(0))


class StateLayout:
    """Abstract shapes and shardings of the train state for one (model, optimizer, mesh)."""

    def __init__(self, model: nn.Module, tx: optax.GradientTransformation, partitioner: Partitioner,
                 boxed_params: Any = None):
        self.model, self.tx, self.partitioner = model, tx, partitioner
        boxed = abstract_boxed_params(model, partitioner) if boxed_params is None else boxed_params
        self.boxed, self.param_specs = boxed, partitioner.param_specs(boxed)
        self.abstract_params = nn.unbox(boxed)
        self.abstract_opt_state = jax.eval_shape(tx.init, self.abstract_params)
        self.opt_specs = partitioner.optimizer_state_specs(self.abstract_opt_state, self.abstract_params,
                                                           self.param_specs, getattr(tx, "factor_rules", None))
        to_sharding = lambda spec: partitioner.sharding(spec)
        is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
        self.param_shardings = jax.tree_util.tree_map(to_sharding, self.param_specs, is_leaf=is_spec)
        self.opt_shardings = jax.tree_util.tree_map(to_sharding, self.opt_specs, is_leaf=is_spec)
        self.state_shardings = TrainState(step=partitioner.replicated(), params=self.param_shardings,
                                          opt_state=self.opt_shardings)

    def with_shardings(self, abstract: Any, shardings: Any) -> Any:
        return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                      abstract, shardings)

    def abstract_state(self) -> TrainState:
        return TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=self.partitioner.replicated()),
                          params=self.with_shardings(self.abstract_params, self.param_shardings),
                          opt_state=self.with_shardings(self.abstract_opt_state, self.opt_shardings))

    def create(self, rng: jax.Array) -> TrainState:
        """Fresh random parameters and optimizer state, created already sharded."""
        rows = self.partitioner.batch_shards
        tokens = jnp.ones((rows, 8), jnp.int32)

        def init(rng):
            params = nn.unbox(self.model.init({"params": rng, "dropout": rng}, tokens, tokens)["params"])
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        return jax.jit(init, out_shardings=self.state_shardings)(rng)

    def from_params(self, params: Any, step: int = 0) -> TrainState:
        """A state around given parameters (e.g. imported from HuggingFace) with a fresh optimizer state.

        ``params`` may be numpy on the host: each device takes only its own slice.
        """
        expected = jax.tree_util.tree_structure(self.abstract_params)
        got = jax.tree_util.tree_structure(params)
        if expected != got:
            raise ValueError(f"parameter tree does not match the model: expected {expected}, got {got}")

        def place(a, ref, sharding):
            if tuple(a.shape) != tuple(ref.shape):
                raise ValueError(f"parameter shape {tuple(a.shape)} does not match the model's {tuple(ref.shape)}")
            return jax.make_array_from_callback(ref.shape, sharding, lambda idx: jnp.asarray(a[idx], ref.dtype))

        placed = jax.tree_util.tree_map(place, params, self.abstract_params, self.param_shardings)
        with self.partitioner.activate():
            opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(placed)
            step_arr = jax.device_put(jnp.asarray(step, jnp.int32), self.partitioner.replicated())
        return TrainState(step=step_arr, params=placed, opt_state=opt_state)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, schedule: Callable, *,
                    num_microbatches: int = 1, label_smoothing: float = 0.0, z_loss: float = 0.0,
                    enable_dropout: bool = False) -> Callable:
    """``step(state, batch, rng) -> (state, metrics)``, un-jitted (see :func:`jit_train_step`)."""

    def loss_fn(params, batch, rng):
        rngs = {"dropout": rng} if enable_dropout else None
        logits = model.apply({"params": params}, **_model_inputs(batch), enable_dropout=enable_dropout, rngs=rngs)
        sums = cross_entropy_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                  label_smoothing=label_smoothing, z_loss=z_loss)
        return sums["loss"], sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: dict, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        if num_microbatches == 1:
            (_, sums), grads = grad_fn(state.params, batch, rng)
        else:
            def split(x):  # rows j*M + i -> micro-batch i: each device keeps its own rows
                b = x.shape[0]
                if b % num_microbatches:
                    raise InputError(f"batch {b} not divisible into {num_microbatches} micro-batches")
                x = x.reshape((b // num_microbatches, num_microbatches) + x.shape[1:])
                return jnp.swapaxes(x, 0, 1)

            micro = jax.tree_util.tree_map(split, batch)

            def body(carry, inputs):
                grads_acc, sums_acc = carry
                i, mb = inputs
                (_, sums), grads = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return (jax.tree_util.tree_map(jnp.add, grads_acc, grads),
                        jax.tree_util.tree_map(jnp.add, sums_acc, sums)), None

            zeros_g = jax.tree_util.tree_map(jnp.zeros_like, state.params)
            zeros_s = {k: jnp.zeros((), jnp.float32) for k in ("loss", "z_loss", "weight", "correct")}
            (grads, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s),
                                            (jnp.arange(num_microbatches), micro))
        denom = jnp.maximum(sums["weight"], 1.0)
        grads = jax.tree_util.tree_map(lambda g: g / denom, grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = sums["loss"] / denom
        metrics = {
            "loss_sum": sums["loss"], "z_loss_sum": sums["z_loss"], "correct_sum": sums["correct"],
            "weight_sum": sums["weight"], "grad_norm": grad_norm,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
            "step": state.step + 1,
            # How full the rows are (padding is token 0): the packing measurement.
            "input_nonpad": jnp.sum(batch["encoder_input_tokens"] != 0, dtype=jnp.float32),
            "input_slots": jnp.asarray(batch["encoder_input_tokens"].size, jnp.float32),
            "target_nonpad": jnp.sum(batch["decoder_target_tokens"] != 0, dtype=jnp.float32),
            "target_slots": jnp.asarray(batch["decoder_target_tokens"].size, jnp.float32),
        }
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def jit_train_step(step_fn: Callable, layout: StateLayout) -> Callable:
    p = layout.partitioner
    jitted = jax.jit(step_fn, in_shardings=(layout.state_shardings, p.batch_sharding(), p.replicated()),
                     out_shardings=(layout.state_shardings, p.replicated()), donate_argnums=(0,))
    return _run_compiled(jitted, p, "train_step")


def make_eval_step(model: nn.Module, layout: StateLayout) -> Callable:
    p = layout.partitioner

    def step(params, batch):
        logits = model.apply({"params": params}, **_model_inputs(batch), enable_dropout=False)
        return cross_entropy_sums(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"])

    jitted = jax.jit(step, in_shardings=(layout.param_shardings, p.batch_sharding()),
                     out_shardings=p.replicated())
    return _run_compiled(jitted, p, "eval_step")


def _run_compiled(jitted, partitioner: Partitioner, name: str) -> Callable:
    """Calls ``jitted`` through its compiled executable, compiled ahead of the first call for each input shape.

    On several hosts every process compiles at its own pace, and the first execution's collectives give up when
    a peer is late (gloo on CPU after 30 s): after compiling, all processes meet at a barrier of the coordination
    service (no collective, long timeout) before anyone runs the program.
    """
    compiled: dict = {}

    def run(*args):
        key = tuple((getattr(x, "shape", None), str(getattr(x, "dtype", ""))) for x in jax.tree_util.tree_leaves(args))
        with partitioner.activate():
            if key not in compiled:
                compiled[key] = jitted.lower(*args).compile()
                wait_for_all_processes(f"ankh_jax_{name}_compiled")
            return compiled[key](*args)

    run.jitted = jitted
    return run
