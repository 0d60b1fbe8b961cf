"""The train step of ``bench_train.py`` by part: each part jitted alone at the bench's shapes and timed.

Parts (forward + backward, times every layer that has one): ``attention`` (encoder self-attention, decoder causal
self-attention and cross-attention: projections, scores, softmax, mix, output projection, with a materialised
bias as the step uses), ``feed-forward`` (the gated-GELU MLP of every layer), ``loss`` (the untied head's logits
and the cross-entropy) and ``optimizer`` (Adafactor's update and its application to every parameter, state
donated as in the step). What the step spends elsewhere (embeddings, RMSNorms, residuals, the bias, fusion
across parts) is the difference to the whole step, reported as ``rest``. Parts jitted alone may fuse less or
more than inside the step: the breakdown says where the time goes, not a sum to the microsecond.
"""

from __future__ import annotations

import time


def _best_of(fn, *args, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _fwd_bwd(module, inputs, rng):
    """A jitted forward + backward of ``module`` (gradients for its params and every input) and its variables."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    params = nn.unbox(jax.jit(module.init)(rng, *inputs))["params"]
    out_shape = jax.eval_shape(lambda p, *x: module.apply({"params": p}, *x), params, *inputs)
    cotangent = jax.random.normal(rng, out_shape.shape, out_shape.dtype)

    def loss(p, *x):
        return jnp.sum(module.apply({"params": p}, *x) * cotangent)

    argnums = tuple(range(1 + sum(1 for x in inputs if jnp.issubdtype(x.dtype, jnp.floating))))
    return jax.jit(jax.grad(loss, argnums=argnums)), params


def time_parts(args, config, tx, params, opt_state, device, repeats: int | None = None) -> dict[str, float]:
    """Seconds per train step spent in each part (see the module docstring), on ``device``."""
    import jax
    import jax.numpy as jnp
    import optax

    from ankh_jax.model.layers import GatedGeluMlp, MultiHeadAttention
    from ankh_jax.training.losses import cross_entropy_sums

    repeats = repeats or max(3, args.steps)
    b, le, ld = args.batch, args.inputs, args.targets
    enc_layers, dec_layers = (int(x) for x in args.layers.split(","))
    rng = jax.random.key(7)
    parts: dict[str, float] = {}
    with jax.default_device(device):
        def x(length):
            return jax.random.normal(rng, (b, length, config.d_model), config.compute_dtype)

        def bias(q, k):
            return jnp.zeros((1, config.num_heads, q, k), jnp.float32)

        class SelfAttention(MultiHeadAttention):  # one input for query and key/value, as a layer passes it
            def __call__(self, h, mask_bias):
                return super().__call__(h, h, mask_bias)

        attention = 0.0
        for count, module, inputs in (
                (enc_layers, SelfAttention(config), (x(le), bias(le, le))),
                (dec_layers, SelfAttention(config), (x(ld), bias(ld, ld))),
                (dec_layers, MultiHeadAttention(config), (x(ld), x(le), bias(ld, le)))):
            if count:
                fn, p = _fwd_bwd(module, inputs, rng)
                attention += count * _best_of(fn, p, *inputs, repeats=repeats)
        parts["attention"] = attention
        mlp = 0.0
        for count, length in ((enc_layers, le), (dec_layers, ld)):
            if count:
                fn, p = _fwd_bwd(GatedGeluMlp(config), (x(length),), rng)
                mlp += count * _best_of(fn, p, x(length), repeats=repeats)
        parts["feed-forward"] = mlp

        head = jax.random.normal(rng, (config.d_model, config.vocab_size), jnp.float32) * config.d_model ** -0.5
        targets = jax.random.randint(rng, (b, ld), 3, 28)

        def loss(w, h):
            logits = (h.astype(config.compute_dtype) @ w.astype(config.compute_dtype)).astype(jnp.float32)
            return cross_entropy_sums(logits, targets, jnp.ones((b, ld), jnp.float32))["loss"]

        parts["loss"] = _best_of(jax.jit(jax.grad(loss, argnums=(0, 1))), head, x(ld), repeats=repeats)

    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 1e-3), params)

    def update(p, s, g):
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    step = jax.jit(update, donate_argnums=(0, 1))
    p, s = jax.tree_util.tree_map(jnp.copy, params), jax.tree_util.tree_map(jnp.copy, opt_state)
    p, s = jax.block_until_ready(step(p, s, grads))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        p, s = jax.block_until_ready(step(p, s, grads))
        times.append(time.perf_counter() - start)
    times.sort()
    parts["optimizer"] = times[len(times) // 2]
    return parts
