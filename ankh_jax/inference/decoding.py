"""Incremental decoding with a KV cache: greedy, sampling and beam search, jitted as one program per shape.

    ids = decoding.generate(config, params, input_ids, max_new_tokens=20, strategy="beam", num_beams=4)

``input_ids`` are encoder token ids ``[batch, length]`` (0 = padding); the result is ``[batch, max_new_tokens]``
int32, the tokens that follow the decoder start token (id 0), with 0 after ``</s>``. The encoder runs once; the
decoder then runs one token per step inside a ``lax.while_loop``, reading its self-attention keys/values from a
fixed-size cache and its cross-attention keys/values from the projections made at the first step (see
``MultiHeadAttention`` in ``model/layers.py``). Inputs are padded to the length buckets of ``ankh_jax.inference.embedding``, so
a program is compiled once per (batch, input bucket, max new tokens, strategy settings).

The strategies follow ``transformers.GenerationMixin.generate`` step for step, so greedy and beam search give the
same tokens as ``T5ForConditionalGeneration.generate`` on the same weights: greedy is the argmax of the logits;
beam search is transformers' vectorised beam search (``2 * num_beams`` candidates per step, hypotheses ending in
``</s>`` scored ``sum log p / length ** length_penalty``, ``early_stopping=False``); ``min_new_tokens`` forbids
``</s>`` before that many tokens. Sampling applies temperature, then top-k, then top-p (nucleus) to the logits, as
transformers' warpers do, and draws with ``jax.random`` from ``seed`` (the same seed repeats the same samples;
transformers' torch samples differ, being a different generator).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ankh_jax.data.batching import bucket_for, length_buckets
from ankh_jax.data.tokenizer import EOS_ID, PAD_ID
from ankh_jax.errors import InputError
from ankh_jax.model.config import T5Config

STRATEGIES = ("greedy", "sample", "beam")
NEG = -1.0e9  # transformers' "impossible" beam score (float32)


def decoding_config(config: T5Config, dtype: str = "float32") -> T5Config:
    """Inference settings: compute ``dtype``, no dropout, no remat; the layer layout is kept."""
    return config.replace(dtype=dtype, dropout_rate=0.0, remat_policy="none")


def prepare_params(config: T5Config, params, num_devices: int | None = None):
    """Params in ``config``'s layout, replicated on every local device (the first ``num_devices``); batches given
    them then run sharded over those devices (``ankh_jax.inference.devices``). Do this once, reuse it. Loaded
    params (``ankh_jax.io.loading.load``) are already plain in that layout; any other form is normalised here."""
    from ankh_jax.inference.devices import DataParallel
    from ankh_jax.model import params_layout

    if "decoder" not in params:
        raise InputError("this model has no decoder (loaded encoder_only?): generation and scoring need one")
    return DataParallel.using(num_devices).replicate(params_layout.as_layout(params, config))


def _model(config: T5Config):
    from ankh_jax.model.network import Transformer

    return Transformer(config)


def init_cache(config: T5Config, params, encoded, encoder_tokens, max_length: int):
    """A zeroed decoding cache for ``encoder_tokens.shape[0]`` rows and ``max_length`` decoder positions."""
    model = _model(config)
    dummy = jnp.zeros((encoder_tokens.shape[0], max_length), jnp.int32)
    shapes = jax.eval_shape(
        lambda p, e, t: model.apply({"params": p}, e, t, dummy, decode=True, mutable=["cache"],
                                    method=model.decode)[1]["cache"], params, encoded, encoder_tokens)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def decode_step(config: T5Config, params, cache, tokens, encoded, encoder_tokens):
    """Appends ``tokens [b, n]`` to the cache; returns ``(logits [b, n, vocab] float32, new cache)``.

    ``encoded`` is required at the first step (it fills the cross-attention cache) and should be None after."""
    model = _model(config)
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, encoder_tokens, tokens,
                                    decode=True, mutable=["cache"], method=model.decode)
    return logits, variables["cache"]


def encode(config: T5Config, params, encoder_tokens):
    model = _model(config)
    return model.apply({"params": params}, encoder_tokens, method=model.encode)


def _reorder_self_cache(cache, rows, scan_layers: bool):
    """Gathers the self-attention key/value buffers of the beams that continue (``rows``: flat beam rows)."""
    axis = 1 if scan_layers else 0

    def gather(path, leaf):
        names = [getattr(p, "key", "") for p in path]
        if "self_attention" in names and leaf.ndim >= 4:
            return jnp.take(leaf, rows, axis=axis)
        return leaf

    return jax.tree_util.tree_map_with_path(gather, cache)


def _forbid_eos(logits, step, min_new_tokens: int):
    if min_new_tokens <= 0:
        return logits
    return logits.at[..., EOS_ID].set(jnp.where(step < min_new_tokens, -jnp.inf, logits[..., EOS_ID]))


def _sample_warp(logits, temperature, top_k: int, top_p):
    """transformers' order: temperature, top-k, top-p (the most likely token always survives)."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of the strictly more likely tokens
    keep_sorted = (before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits, -jnp.inf)


def _greedy_or_sample(config, params, encoded, enc, *, max_new_tokens, min_new_tokens, sample, temperature,
                      top_k, top_p, key):
    b = enc.shape[0]
    cache = init_cache(config, params, encoded, enc, max_new_tokens + 1)
    logits, cache = decode_step(config, params, cache, jnp.zeros((b, 1), jnp.int32), encoded, enc)
    out = jnp.zeros((b, max_new_tokens), jnp.int32)

    def body(state):
        t, cache, logits, out, done = state
        scores = _forbid_eos(logits[:, -1], t, min_new_tokens)
        if sample:
            warped = _sample_warp(scores, temperature, top_k, top_p)
            token = jax.random.categorical(jax.random.fold_in(key, t), warped).astype(jnp.int32)
        else:
            token = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        token = jnp.where(done, PAD_ID, token)
        out = out.at[:, t].set(token)
        done = done | (token == EOS_ID)
        logits, cache = decode_step(config, params, cache, token[:, None], None, enc)
        return t + 1, cache, logits, out, done

    def cond(state):
        t, _, _, _, done = state
        return (t < max_new_tokens) & ~jnp.all(done)

    state = (jnp.zeros((), jnp.int32), cache, logits, out, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, state)[3]


def _beam_search(config, params, encoded, enc, *, max_new_tokens, min_new_tokens, num_beams, length_penalty):
    """transformers' ``_beam_search`` (``do_sample=False``, ``early_stopping=False``) with fixed shapes."""
    b, nb, k = enc.shape[0], num_beams, 2 * num_beams
    enc = jnp.repeat(enc, nb, axis=0)
    encoded = jnp.repeat(encoded, nb, axis=0)
    cache = init_cache(config, params, encoded, enc, max_new_tokens + 1)
    logits, cache = decode_step(config, params, cache, jnp.zeros((b * nb, 1), jnp.int32), encoded, enc)
    top_mask = jnp.arange(k) < nb
    batch_rows = (jnp.arange(b) * nb)[:, None]

    def gather(x, idx):  # x [b, beams, ...], idx [b, n] -> [b, n, ...]
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def body(state):
        t, cache, logits, running, running_scores, seqs, scores, finished, open_, _ = state
        log_probs = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
        log_probs = _forbid_eos(log_probs, t, min_new_tokens)
        vocab = log_probs.shape[-1]
        acc = (log_probs.reshape(b, nb, vocab) + running_scores[:, :, None]).reshape(b, nb * vocab)
        top_scores, top_idx = jax.lax.top_k(acc, k)
        src_beam = top_idx // vocab
        cand = gather(running, src_beam).at[:, :, t].set(top_idx % vocab)
        hits = (top_idx % vocab == EOS_ID) | (t + 1 >= max_new_tokens)
        # e. the best unfinished candidates continue
        alive_scores = top_scores + hits.astype(jnp.float32) * NEG
        keep = jax.lax.top_k(alive_scores, nb)[1]
        running, running_scores = gather(cand, keep), gather(alive_scores, keep)
        rows = (gather(src_beam, keep) + batch_rows).reshape(-1)
        # f. finished hypotheses among the top num_beams candidates join the kept ones if they score higher
        just_done = hits & top_mask[None]
        penalised = top_scores / ((t + 1).astype(jnp.float32) ** length_penalty)
        penalised = penalised + (~open_).astype(jnp.float32) * NEG + (~just_done).astype(jnp.float32) * NEG
        merged = jnp.concatenate([scores, penalised], axis=1)
        best = jax.lax.top_k(merged, nb)[1]
        seqs = gather(jnp.concatenate([seqs, cand], axis=1), best)
        scores = gather(merged, best)
        finished = gather(jnp.concatenate([finished, just_done], axis=1), best)
        # g. can a running beam still beat the worst kept hypothesis?
        best_running = running_scores[:, :1] / ((t + 1).astype(jnp.float32) ** length_penalty)
        worst = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), NEG)
        open_ = open_ & jnp.any(best_running > worst, axis=-1, keepdims=True)
        cache = _reorder_self_cache(cache, rows, config.scan_layers)
        step_tokens = running[:, :, t].reshape(-1, 1)
        logits, cache = decode_step(config, params, cache, step_tokens, None, enc)
        return t + 1, cache, logits, running, running_scores, seqs, scores, finished, open_, ~jnp.all(hits)

    def cond(state):  # transformers stops when no row can improve or every candidate has stopped
        return (state[0] < max_new_tokens) & jnp.any(state[-2]) & state[-1]

    running = jnp.zeros((b, nb, max_new_tokens), jnp.int32)
    running_scores = jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(NEG)
    state = (jnp.zeros((), jnp.int32), cache, logits, running, running_scores, running,
             jnp.full((b, nb), NEG, jnp.float32), jnp.zeros((b, nb), bool), jnp.ones((b, 1), bool),
             jnp.ones((), bool))
    seqs = jax.lax.while_loop(cond, body, state)[5][:, 0]
    after_eos = jnp.cumsum(jnp.cumsum(seqs == EOS_ID, axis=1), axis=1) > 1  # positions after the first </s>
    return jnp.where(after_eos, PAD_ID, seqs)


@functools.lru_cache(maxsize=32)
def generate_fn(config: T5Config, strategy: str, max_new_tokens: int, min_new_tokens: int = 0,
                num_beams: int = 1, length_penalty: float = 1.0, top_k: int = 0):
    """The jitted ``fn(params, input_ids, temperature, top_p, seed) -> [b, max_new_tokens]`` for these settings
    (jit then keeps one executable per input shape)."""
    if strategy not in STRATEGIES:
        raise InputError(f"strategy={strategy!r}; expected one of {STRATEGIES}")

    def run(params, enc, temperature, top_p, seed):
        encoded = encode(config, params, enc)
        if strategy == "beam":
            return _beam_search(config, params, encoded, enc, max_new_tokens=max_new_tokens,
                                min_new_tokens=min_new_tokens, num_beams=num_beams, length_penalty=length_penalty)
        return _greedy_or_sample(config, params, encoded, enc, max_new_tokens=max_new_tokens,
                                 min_new_tokens=min_new_tokens, sample=strategy == "sample",
                                 temperature=temperature, top_k=top_k, top_p=top_p, key=jax.random.key(seed))

    return jax.jit(run)


def check_settings(*, strategy: str, max_new_tokens: int, min_new_tokens: int = 0, num_beams: int = 1,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """Raises ValueError naming the first bad setting (before any compute)."""
    if strategy not in STRATEGIES:
        raise InputError(f"strategy={strategy!r}; expected one of {STRATEGIES}")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens}; need at least 1")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise InputError(f"min_new_tokens={min_new_tokens}; need 0 <= min_new_tokens <= max_new_tokens")
    if strategy == "beam" and num_beams < 2:
        raise InputError(f"num_beams={num_beams}; beam search needs at least 2")
    if not temperature > 0:
        raise InputError(f"temperature={temperature}; must be > 0")
    if top_k < 0:
        raise InputError(f"top_k={top_k}; must be >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p={top_p}; must be in (0, 1]")


def pad_to_bucket(input_ids, vocab_size: int = 144) -> np.ndarray:
    """``[b, l]`` ids right-padded with 0 to the embedding length bucket of ``l`` (at least the longest row)."""
    ids = np.asarray(input_ids, dtype=np.int32)
    if ids.ndim != 2 or ids.shape[0] == 0:
        raise InputError(f"input_ids must be [batch, length] with batch >= 1, got shape {ids.shape}")
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= vocab_size:
        raise InputError(f"input_ids hold ids outside 0..{vocab_size - 1}")
    used = int((ids != PAD_ID).sum(axis=1).max()) if ids.size else 0
    if used == 0:
        raise InputError("every row of input_ids is padding")
    width = bucket_for(ids.shape[1], length_buckets(ids.shape[1]))
    return np.pad(ids, ((0, 0), (0, width - ids.shape[1])))


def generate(config: T5Config, params, input_ids, *, max_new_tokens: int = 20, strategy: str = "greedy",
             num_beams: int = 1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             min_new_tokens: int = 0, length_penalty: float = 1.0, seed: int = 0, prepared: bool = False
             ) -> np.ndarray:
    """Generated ids ``[batch, max_new_tokens]`` (0 after ``</s>``). ``params``: plain params in either layout,
    or the result of :func:`prepare_params` with ``prepared=True``."""
    check_settings(strategy=strategy, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                   num_beams=num_beams, temperature=temperature, top_k=top_k, top_p=top_p)
    ids = pad_to_bucket(input_ids, config.vocab_size)
    config = decoding_config(config, config.dtype)
    if not prepared:
        params = prepare_params(config, params)
    from ankh_jax.inference.devices import DataParallel

    fn = generate_fn(config, strategy, max_new_tokens, min_new_tokens, num_beams if strategy == "beam" else 1,
                     float(length_penalty), top_k if strategy == "sample" else 0)
    settings = (jnp.float32(temperature), jnp.float32(top_p), jnp.uint32(seed))
    # Rows sharded over the devices params were replicated on; sampling draws per row from (seed, step), so a
    # row's tokens do not depend on how the rows are split.
    return DataParallel.of(params).run_rows(lambda p, enc: fn(p, enc, *settings), params, ids)
