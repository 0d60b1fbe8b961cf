"""Adafactor factored by logical axes, as t5x factors it (``t5x/adafactor.py``), as an optax chain.

optax's ``adafactor`` factors the second moment of a parameter over its two largest dimensions, and only when the
second largest has at least ``min_dim_size_to_factor`` (128) entries. A ``[embed, heads, kv]`` attention kernel
(d_kv = 64) is then not factored at all, and a stacked ``[layers, ...]`` kernel's clipping and parameter scale are
taken over all its layers at once. t5x instead reads the parameter's logical axes:

* ``embed`` is the ROW, ``heads`` / ``kv`` / ``joined_kv`` / ``mlp`` / ``vocab`` are COLUMNs, ``layers`` (the scanned
  stack) is a BATCH axis, anything else (``relpos_buckets``) is not factored. A kernel with both a row and a column
  keeps ``v_row`` (its column axes averaged away: ``[embed]``, or ``[layers, embed]`` when scanned) and ``v_col``
  (its row averaged away: ``[heads, kv]``); one without both keeps the full ``v``.
* Parameters of rank <= 2 without a batch axis use the size heuristic (two largest axes, ``min_dim_size_to_factor``).
* The update clipping (block RMS) and the parameter scale are computed per batch entry: over every axis but
  ``layers``, so a scanned layer is updated exactly as the same layer unrolled.

The rule itself (decay ``1 - (t+1)^-0.8``, ``grad**2 + 1e-30``, ``v_row / mean(v_row)`` times ``v_col`` as the
second-moment estimate, clipping the update's RMS to 1, scaling by ``max(RMS(param), 1e-3)``) is unchanged. The
state keeps optax's tree (``FactoredState(count, v_row, v_col, v)``, ``(1,)`` slots for the unused
statistics), so a checkpoint written with optax's layout differs only in leaf shapes and
:func:`convert_statistics` turns it into this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

ROW, COLUMN, BATCH = "row", "column", "batch"
STANDARD_FACTOR_RULES: Mapping[str, str | None] = {
    "embed": ROW, "vocab": COLUMN, "mlp": COLUMN, "heads": COLUMN, "kv": COLUMN, "joined_kv": COLUMN,
    "relpos_buckets": None, "layers": BATCH, "stack": BATCH}
MIN_PARAM_SCALE = 1e-3  # t5x's epsilon2
EPSILON = 1e-30         # t5x's epsilon1


@dataclasses.dataclass(frozen=True)
class FactorRule:
    """How one parameter's second moment is kept: ``rows`` and ``columns`` (both empty: unfactored) and the batch
    axes that clipping and the parameter scale do not average over. A pytree leaf."""

    ndim: int
    rows: tuple[int, ...] = ()
    columns: tuple[int, ...] = ()
    batch: tuple[int, ...] = ()

    @property
    def factored(self) -> bool:
        return bool(self.rows and self.columns)

    @property
    def averaging(self) -> tuple[int, ...]:
        return tuple(d for d in range(self.ndim) if d not in self.batch)


def size_rule(shape: tuple[int, ...], min_dim_size_to_factor: int) -> FactorRule:
    """optax's (and t5x's fallback) heuristic: the second largest axis is the row, the largest the column."""
    if len(shape) < 2:
        return FactorRule(len(shape))
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return FactorRule(len(shape))
    return FactorRule(len(shape), rows=(int(order[-2]),), columns=(int(order[-1]),))


def logical_rule(axes: tuple | None, shape: tuple[int, ...], min_dim_size_to_factor: int,
                 rules: Mapping[str, str | None] = STANDARD_FACTOR_RULES) -> FactorRule:
    """t5x's rule for one parameter from its logical axis names (``None``: the size heuristic)."""
    if axes is None or len(axes) != len(shape):
        return size_rule(shape, min_dim_size_to_factor)
    kinds = [rules.get(name) if name is not None else None for name in axes]
    batch = tuple(d for d, k in enumerate(kinds) if k == BATCH)
    if len(shape) <= 2 and not batch:
        return size_rule(shape, min_dim_size_to_factor)
    rows = tuple(d for d, k in enumerate(kinds) if k == ROW)
    columns = tuple(d for d, k in enumerate(kinds) if k == COLUMN)
    if not (rows and columns):
        rows = columns = ()
    return FactorRule(len(shape), rows, columns, batch)


def factor_rules(logical_specs, abstract_params, min_dim_size_to_factor: int, by_logical_axes: bool = True):
    """A :class:`FactorRule` per parameter, from the parameters' logical ``PartitionSpec`` s (``nn.get_partition_spec``
    of the boxed parameters) or, with ``by_logical_axes=False``, from their sizes alone (optax's layout)."""
    shapes = jax.tree_util.tree_leaves(abstract_params)
    specs = jax.tree_util.tree_leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)
    if len(specs) != len(shapes):
        specs = [None] * len(shapes)
    out = []
    for spec, leaf in zip(specs, shapes):
        shape = tuple(leaf.shape)
        if by_logical_axes:
            out.append(logical_rule(tuple(spec) if spec is not None else None, shape, min_dim_size_to_factor))
        else:
            out.append(size_rule(shape, min_dim_size_to_factor))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract_params), out)


def _unused_slot(dtype):
    return jnp.zeros((1,), dtype)


def scale_by_factored_rms(rules, decay_rate: float = 0.8, decay_offset: int = 0,
                          epsilon: float = EPSILON) -> optax.GradientTransformation:
    """The factored second-moment scaling, one :class:`FactorRule` per parameter (``rules``: the params' tree)."""

    def init(params):
        def one(p, rule: FactorRule):
            if rule.factored:
                return (jnp.zeros(np.delete(p.shape, rule.columns), p.dtype),
                        jnp.zeros(np.delete(p.shape, rule.rows), p.dtype), _unused_slot(p.dtype))
            return _unused_slot(p.dtype), _unused_slot(p.dtype), jnp.zeros_like(p)

        return _state(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(one, params, rules))

    def update(grads, state, params=None):
        t = jnp.asarray(state.count - decay_offset + 1, jnp.float32)
        decay = 1.0 - t ** (-decay_rate)

        def one(g, v_row, v_col, v, rule: FactorRule):
            g2 = jnp.square(g) + epsilon
            if not rule.factored:
                new_v = decay * v + (1 - decay) * g2
                return g * new_v ** -0.5, v_row, v_col, new_v.astype(v.dtype)
            new_row = decay * v_row + (1 - decay) * jnp.mean(g2, axis=rule.columns)
            new_col = decay * v_col + (1 - decay) * jnp.mean(g2, axis=rule.rows)
            row_axes_in_v_row = tuple(d - sum(c < d for c in rule.columns) for d in rule.rows)
            row_factor = (new_row / jnp.mean(new_row, axis=row_axes_in_v_row, keepdims=True)) ** -0.5
            col_factor = new_col ** -0.5
            u = g * jnp.expand_dims(row_factor, rule.columns) * jnp.expand_dims(col_factor, rule.rows)
            return u, new_row.astype(v_row.dtype), new_col.astype(v_col.dtype), v

        out = jax.tree_util.tree_map(one, grads, state.v_row, state.v_col, state.v, rules)
        pick = lambda i: jax.tree_util.tree_map(lambda o: o[i], out, is_leaf=lambda x: isinstance(x, tuple))
        return pick(0), optax.FactoredState(count=optax.safe_increment(state.count), v_row=pick(1), v_col=pick(2),
                                            v=pick(3))

    return optax.GradientTransformation(init, update)


def _state(count, per_param):
    pick = lambda i: jax.tree_util.tree_map(lambda o: o[i], per_param, is_leaf=lambda x: isinstance(x, tuple))
    return optax.FactoredState(count=count, v_row=pick(0), v_col=pick(1), v=pick(2))


def _block_rms(x, rule: FactorRule):
    return jnp.sqrt(jnp.mean(jnp.square(x), axis=rule.averaging, keepdims=True))


def clip_by_block_rms(rules, threshold: float) -> optax.GradientTransformation:
    """Each update divided by ``max(1, RMS / threshold)``, the RMS taken per batch entry."""

    def update(updates, state, params=None):
        clip = lambda u, rule: u / jnp.maximum(1.0, _block_rms(u, rule) / threshold)
        return jax.tree_util.tree_map(clip, updates, rules), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_param_block_rms(rules, min_scale: float = MIN_PARAM_SCALE) -> optax.GradientTransformation:
    """Each update times ``max(RMS(param), min_scale)``, the RMS taken per batch entry (t5x's relative step)."""

    def update(updates, state, params):
        if params is None:
            raise ValueError("scale_by_param_block_rms needs the parameters")
        scale = lambda u, p, rule: u * jnp.maximum(_block_rms(p, rule), min_scale).astype(u.dtype)
        return jax.tree_util.tree_map(scale, updates, params, rules), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def adafactor(rules, learning_rate, *, decay_rate: float = 0.8, multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              weight_decay_rate: float | None = None) -> optax.GradientTransformation:
    """``optax.adafactor``'s chain (and state tree), each step following ``rules`` (see :func:`factor_rules`)."""
    tx = [scale_by_factored_rms(rules, decay_rate)]
    if clipping_threshold is not None:
        tx.append(clip_by_block_rms(rules, clipping_threshold))
    tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(scale_by_param_block_rms(rules))
    if momentum is not None:
        tx.append(optax.ema(momentum, debias=False))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate))
    tx.append(optax.scale(-1))
    return optax.chain(*tx)


def statistics_spec(field: str, rule: FactorRule, param_spec: PartitionSpec) -> PartitionSpec:
    """The mesh spec of one second-moment statistic: the parameter's, with the averaged axes dropped."""
    spec = tuple(param_spec) + (None,) * (rule.ndim - len(tuple(param_spec)))
    if field == "v" and not rule.factored:
        return PartitionSpec(*spec)
    if field == "v_row" and rule.factored:
        return PartitionSpec(*(s for d, s in enumerate(spec) if d not in rule.columns))
    if field == "v_col" and rule.factored:
        return PartitionSpec(*(s for d, s in enumerate(spec) if d not in rule.rows))
    return PartitionSpec()  # a (1,) unused slot


def _full_estimate(v_row, v_col, v, rule: FactorRule, shape):
    """The second moment a statistic stands for: ``v`` itself, or Adafactor's rank-1 estimate from the factors."""
    if not rule.factored:
        return v
    row_axes_in_v_row = tuple(d - sum(c < d for c in rule.columns) for d in rule.rows)
    mean = jnp.mean(v_row, axis=row_axes_in_v_row, keepdims=True)
    est = jnp.expand_dims(v_row / mean, rule.columns) * jnp.expand_dims(v_col, rule.rows)
    return jnp.broadcast_to(est, shape)


def convert_statistics(old: optax.FactoredState, old_rules, new_rules, abstract_params) -> optax.FactoredState:
    """A ``FactoredState`` kept under ``old_rules`` recomputed for ``new_rules``: an unfactored ``v`` gives the new
    factors exactly (a mean of an average of ``g**2`` is the average of its means); old factors give their rank-1
    estimate, which the new factors then summarise. Call it inside ``jax.jit`` for sharded states."""

    def one(v_row, v_col, v, old_rule, new_rule, p):
        full = _full_estimate(v_row, v_col, v, old_rule, p.shape)
        if new_rule.factored:
            return (jnp.mean(full, axis=new_rule.columns).astype(p.dtype),
                    jnp.mean(full, axis=new_rule.rows).astype(p.dtype), _unused_slot(p.dtype))
        return _unused_slot(p.dtype), _unused_slot(p.dtype), full.astype(p.dtype)

    out = jax.tree_util.tree_map(one, old.v_row, old.v_col, old.v, old_rules, new_rules, abstract_params)
    return _state(old.count, out)
