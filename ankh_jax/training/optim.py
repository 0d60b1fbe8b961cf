"""Optimizers and learning-rate schedules (optax), gin-configurable: the one factory of pretraining and fine-tuning.

Ankh was pretrained with Adafactor, a linear warm-up of 10k steps then a linear decay, and no weight decay. The
Adafactor here is optax's (factored second moments, update clipping by block RMS 1.0, decay 0.8, learning rate
scaled by the parameter RMS as in t5x), preceded by optional global-norm clipping of the raw gradients.

Pretraining binds ``make_schedule.*`` / ``make_optimizer.*`` in gin. Fine-tuning
(``ankh_jax.downstream.trainer.OptimizerConfig``) calls the same two functions with every argument explicit
(AdamW, a warm-up capped at a tenth of the run), through :func:`make_grouped_optimizer` for its parameter groups
(another learning rate for the encoder) and gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin
import jax.numpy as jnp
import optax

from ankh_jax.errors import InputError


@gin.configurable
def make_schedule(peak_learning_rate: float = 1e-3, warmup_steps: int = 0, total_steps: int | None = None,
                  decay: str = "linear", end_learning_rate: float = 0.0,
                  init_learning_rate: float = 0.0) -> optax.Schedule:
    """Linear warm-up from ``init_learning_rate`` to the peak, then a decay to ``end_learning_rate``.

    decay: ``linear`` (to end_learning_rate at total_steps), ``cosine`` (same end points), ``rsqrt``
    (peak * sqrt(warmup / step), t5x's default) or ``constant``.
    """
    if peak_learning_rate <= 0:
        raise InputError(f"make_schedule.peak_learning_rate must be positive, got {peak_learning_rate}")
    if warmup_steps < 0:
        raise InputError(f"make_schedule.warmup_steps must be >= 0, got {warmup_steps}")
    if decay in ("linear", "cosine"):
        if total_steps is None or total_steps <= warmup_steps:
            raise InputError(f"make_schedule: {decay} decay needs total_steps ({total_steps}) > warmup_steps "
                             f"({warmup_steps}); in the pretrain configs these are TRAIN_STEPS and WARMUP_STEPS")
        decay_steps = total_steps - warmup_steps
        if decay == "linear":
            after = optax.linear_schedule(peak_learning_rate, end_learning_rate, decay_steps)
        else:
            after = optax.cosine_decay_schedule(peak_learning_rate, decay_steps,
                                                alpha=end_learning_rate / peak_learning_rate)
    elif decay == "rsqrt":
        floor = max(warmup_steps, 1)

        def after(count):
            return peak_learning_rate * jnp.sqrt(floor / jnp.maximum(count + warmup_steps, floor))
    elif decay == "constant":
        after = optax.constant_schedule(peak_learning_rate)
    else:
        raise InputError(f"make_schedule.decay: unknown decay {decay!r}; expected linear, cosine, rsqrt or constant")
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(init_learning_rate, peak_learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


@gin.configurable
def make_optimizer(learning_rate: optax.Schedule, name: str = "adafactor", clip_grad_norm: float | None = 1.0,
                   weight_decay: float = 0.0, adafactor_decay_rate: float = 0.8,
                   adafactor_multiply_by_parameter_scale: bool = True,
                   adafactor_clipping_threshold: float | None = 1.0, adafactor_momentum: float | None = None,
                   adafactor_min_dim_size_to_factor: int = 128, adafactor_factored_by: str = "logical_axes",
                   adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps: float = 1e-8,
                   param_axes: tuple | None = None) -> optax.GradientTransformation:
    """``adafactor`` (Ankh's pretraining optimizer) or ``adamw``; gradients are clipped to a global norm first.

    adafactor_factored_by: ``logical_axes`` (t5x's rule, :mod:`ankh_jax.training.adafactor`; needs
    ``param_axes``) or ``size`` (optax's ``adafactor``: the two largest axes, when the second has
    ``adafactor_min_dim_size_to_factor``; the layout of checkpoints written before the logical rule).
    param_axes: ``(logical PartitionSpecs, abstract params)`` of the model (the trainer's ``build_program`` passes
    them). With them, the returned transformation carries ``factor_rules`` (one
    :class:`~ankh_jax.training.adafactor.FactorRule` per parameter, None for adamw), which the state's sharding
    follows; without them, Adafactor is optax's.
    """
    if adafactor_factored_by not in ("logical_axes", "size"):
        raise ValueError(f"make_optimizer.adafactor_factored_by={adafactor_factored_by!r}: expected "
                         "'logical_axes' or 'size'")
    rules = None
    if name == "adafactor" and param_axes is not None:
        from ankh_jax.training import adafactor

        rules = adafactor.factor_rules(*param_axes, adafactor_min_dim_size_to_factor,
                                       by_logical_axes=adafactor_factored_by == "logical_axes")
        core = adafactor.adafactor(
            rules, learning_rate, decay_rate=adafactor_decay_rate,
            multiply_by_parameter_scale=adafactor_multiply_by_parameter_scale,
            clipping_threshold=adafactor_clipping_threshold, momentum=adafactor_momentum,
            weight_decay_rate=weight_decay or None)
    elif name == "adafactor":
        core = optax.adafactor(
            learning_rate=learning_rate, min_dim_size_to_factor=adafactor_min_dim_size_to_factor,
            decay_rate=adafactor_decay_rate, multiply_by_parameter_scale=adafactor_multiply_by_parameter_scale,
            clipping_threshold=adafactor_clipping_threshold, momentum=adafactor_momentum,
            weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        core = optax.adamw(learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps, weight_decay=weight_decay)
    else:
        raise InputError(f"make_optimizer.name: unknown optimizer {name!r}; expected adafactor or adamw")
    tx = optax.chain(optax.clip_by_global_norm(clip_grad_norm), core) if clip_grad_norm else core
    if param_axes is None:
        return tx
    return WithFactorRules(tx.init, tx.update, rules)


class WithFactorRules(optax.GradientTransformation):
    """A transformation and the Adafactor :class:`~ankh_jax.training.adafactor.FactorRule` s its state follows
    (``factor_rules``: the params' tree, or None when the optimizer keeps no factored statistics)."""

    def __new__(cls, init, update, factor_rules):
        self = super().__new__(cls, init, update)
        self.factor_rules = factor_rules
        return self


def make_grouped_optimizer(schedules: Mapping[str, optax.Schedule], labels: Mapping[str, str] | None = None, *,
                           accumulate_steps: int = 1, **optimizer_kwargs) -> optax.GradientTransformation:
    """:func:`make_optimizer` per parameter group, then gradient accumulation.

    ``schedules`` maps a group name to its learning-rate schedule; ``labels`` maps each top-level key of the
    params to a group (``None`` with a single group: every parameter in it). ``optimizer_kwargs`` go to every
    group's :func:`make_optimizer`. With ``accumulate_steps`` > 1 the updates are applied every that many calls,
    from the mean gradient (``optax.MultiSteps``).
    """
    if labels is None:
        if len(schedules) != 1:
            raise InputError(f"make_grouped_optimizer: {len(schedules)} groups need labels saying which is which")
        tx = make_optimizer(next(iter(schedules.values())), **optimizer_kwargs)
    else:
        tx = optax.multi_transform({group: make_optimizer(schedule, **optimizer_kwargs)
                                    for group, schedule in schedules.items()}, dict(labels))
    if accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps)
    return tx
