"""Memory-efficient T5 attention: O(L) memory instead of ``heads x L x L``.

Keys and values are visited in chunks with an online softmax (a running maximum, a running sum and a rescaled
accumulator, all in float32: the formulation of Rabe & Staats 2021, "Self-attention does not need O(n^2) memory",
and of flash attention); queries are visited in chunks too. The relative-position bias is computed per
(query chunk, key chunk) pair from positions through the model's own bucket function and the ``[heads,
num_buckets]`` embedding table, and the padding / segment / causal mask per pair as well, so no ``L x L`` tensor
exists at any point. A pair whose offsets all lie beyond the bucketing's reach (``constant_tails``) adds one
bias per head instead of gathering one per position pair. The numerics follow ``layers.MultiHeadAttention``: no
``1/sqrt(d_kv)`` on the logits (T5 folds it into the query init), float32 logits, bias and softmax, masked
logits at ``NEG_INF`` (finite, so a fully masked row averages its keys like the plain path does), the
probabilities cast to the values' dtype for the mix. The chunk bodies are under ``jax.checkpoint``, so the
backward pass recomputes each chunk's logits rather than storing them and its memory stays O(L) as well.

:class:`ChunkedBias` carries everything but ``q, k, v`` (the table, the key mask, positions, segment ids and the
static settings) as one pytree, so a network can pass it to its layers where it would pass a materialised bias.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ankh_jax.model.layers import NEG_INF, relative_position_bucket

PAD_LOGIT = 2 * NEG_INF  # keys that only pad the last chunk: weight exp(-1e10) = 0 even in a fully masked row
DEFAULT_CHUNK_SIZE = 1024


def _pad_axis(x, axis: int, size: int, value=0):
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _chunks(x, axis: int, n: int, size: int, value=0):
    """``x`` padded along ``axis`` to ``n * size`` and split there into a leading axis of ``n`` chunks."""
    x = _pad_axis(x, axis, n * size, value)
    shape = x.shape[:axis] + (n, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _as_rows(x):
    """Positions / segment ids as ``[rows, length]`` (``rows`` is the batch or 1)."""
    x = jnp.asarray(x)
    return x[None] if x.ndim == 1 else x


def offset_buckets(q_len: int, k_len: int, *, bidirectional: bool, num_buckets: int, max_distance: int) -> np.ndarray:
    """The bucket of every ``key - query`` offset from ``-(q_len - 1)`` to ``k_len - 1`` (index ``offset + q_len
    - 1``): O(L) numbers from the same numpy arithmetic as the plain path's ``[q, k]`` table, so the per-chunk
    bias is bit-identical to the materialised one."""
    offsets = np.arange(-(q_len - 1), k_len, dtype=np.int32)
    return relative_position_bucket(offsets, bidirectional=bidirectional, num_buckets=num_buckets,
                                    max_distance=max_distance, xp=np)


def chunked_attention(q, k, v, *, bias_table=None, bidirectional: bool = True, num_buckets: int = 32,
                      max_distance: int = 128, key_mask=None, q_positions=None, k_positions=None,
                      q_segment_ids=None, k_segment_ids=None, causal: bool = False,
                      chunk_size: int = DEFAULT_CHUNK_SIZE, query_chunk_size: int | None = None,
                      dropout_rate: float = 0.0, dropout_rng=None):
    """T5 attention of ``q [b, h, q_len, d_kv]`` over ``k, v [b, h, k_len, d_kv]`` -> ``[b, h, q_len, d_kv]`` in
    ``q``'s dtype, in O(L) memory.

    ``bias_table``: the relative-position embedding ``[h, num_buckets]`` (``None``: no position bias, as in T5's
    cross-attention), bucketed with ``bidirectional`` / ``num_buckets`` / ``max_distance``. Key ``j`` is seen by
    query ``i`` where ``key_mask[b, j]`` (``[b, k_len]`` bool, ``None``: every key), where ``q_segment_ids[b, i] ==
    k_segment_ids[b, j]`` (packing; both or neither) and, with ``causal``, where ``j <= i``. ``q_positions`` /
    ``k_positions`` (``[b or 1, len]`` int, packing) replace ``arange`` in the bias, like the plain path's traced
    branch; without them the buckets come from :func:`offset_buckets`. Keys are visited ``chunk_size`` at a time,
    queries ``query_chunk_size`` at a time (``None``: ``chunk_size``; pass ``q_len`` for one query chunk); peak
    memory is about ``b * h * query_chunk_size * chunk_size`` float32 numbers times a small constant.
    ``dropout_rate`` > 0 with ``dropout_rng`` drops attention probabilities (scaled by ``1 / (1 - rate)``) with one
    key per chunk pair (see :func:`dropout_keep`); the normaliser is the undropped sum, as in dropout after softmax.
    """
    b, h, q_len, d_kv = q.shape
    k_len = k.shape[2]
    if (q_segment_ids is None) != (k_segment_ids is None):
        raise ValueError("q_segment_ids and k_segment_ids go together")
    if (q_positions is None) != (k_positions is None):
        raise ValueError("q_positions and k_positions go together")
    ck = max(1, min(chunk_size, k_len))
    cq = max(1, min(query_chunk_size or chunk_size, q_len))
    nk, nq = -(-k_len // ck), -(-q_len // cq)

    key_valid = jnp.arange(nk * ck) < k_len                                    # the real keys, not chunk padding
    key_valid = jnp.broadcast_to(key_valid, (b, nk * ck))
    if key_mask is not None:
        key_valid = key_valid & _pad_axis(jnp.asarray(key_mask, bool), 1, nk * ck, False)
    lookup, tails = None, None
    if bias_table is not None and q_positions is None:
        buckets = offset_buckets(nq * cq, nk * ck, bidirectional=bidirectional, num_buckets=num_buckets,
                                 max_distance=max_distance)
        lookup, tails = jnp.asarray(buckets), constant_tails(buckets, nq * cq)
    settings = {"bidirectional": bidirectional, "num_buckets": num_buckets, "max_distance": max_distance,
                "causal": causal, "q_span": nq * cq, "rate": float(dropout_rate) if dropout_rng is not None else 0.0,
                "tails": tails}

    keys = {"k": _chunks(k, 2, nk, ck), "v": _chunks(v, 2, nk, ck), "index": jnp.arange(nk * ck).reshape(nk, ck),
            "chunk": jnp.arange(nk), "valid": _chunks(key_valid, 1, nk, ck, False),
            "real": _chunks(jnp.arange(nk * ck) < k_len, 0, nk, ck, False)}
    queries = {"q": _chunks(q, 2, nq, cq), "index": jnp.arange(nq * cq).reshape(nq, cq), "chunk": jnp.arange(nq)}
    if q_positions is not None:
        queries["pos"] = _chunks(_as_rows(q_positions), 1, nq, cq)
        keys["pos"] = _chunks(_as_rows(k_positions), 1, nk, ck)
    if q_segment_ids is not None:
        queries["seg"] = _chunks(_as_rows(q_segment_ids), 1, nq, cq)
        keys["seg"] = _chunks(_as_rows(k_segment_ids), 1, nk, ck)

    table = None if bias_table is None else jnp.asarray(bias_table)
    one_query_chunk = jax.checkpoint(functools.partial(_attend_query_chunk, settings=settings))
    out = jax.lax.map(lambda qc: one_query_chunk(qc, keys, table, lookup, dropout_rng), queries)  # [nq, b, h, cq, d]
    out = jnp.moveaxis(out, 0, 2).reshape(b, h, nq * cq, d_kv)[:, :, :q_len]
    return out.astype(q.dtype)


def _attend_query_chunk(qc, keys, table, lookup, rng, *, settings):
    """One query chunk against every key chunk (a scan carrying the online-softmax state)."""
    b, h, cq, d_kv = qc["q"].shape

    def step(carry, kc):
        acc, running_max, total = carry
        logits = jnp.einsum("bhqd,bhkd->bhqk", qc["q"], kc["k"], preferred_element_type=jnp.float32)
        logits = _add_chunk_bias(logits, qc, kc, table, lookup, settings)
        logits = jnp.where(kc["real"][None, None, None, :], logits, PAD_LOGIT)
        new_max = jnp.maximum(running_max, logits.max(axis=-1))
        rescale = jnp.exp(running_max - new_max)
        probs = jnp.exp(logits - new_max[..., None])
        total = total * rescale + probs.sum(axis=-1)
        if settings["rate"] > 0:
            probs = probs * dropout_keep(rng, qc["chunk"], kc["chunk"], probs.shape, settings["rate"])
        mixed = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(kc["v"].dtype), kc["v"],
                           preferred_element_type=jnp.float32)
        return (acc * rescale[..., None] + mixed, new_max, total), None

    init = (jnp.zeros((b, h, cq, d_kv), jnp.float32), jnp.full((b, h, cq), PAD_LOGIT, jnp.float32),
            jnp.zeros((b, h, cq), jnp.float32))
    (acc, _, total), _ = jax.lax.scan(jax.checkpoint(step), init, keys)
    return acc / total[..., None]


def constant_tails(buckets: np.ndarray, q_span: int) -> tuple[int, int]:
    """Where T5's bucketing stops changing: ``(pos_from, neg_to)`` such that every ``key - query`` offset >=
    ``pos_from`` has the bucket of the largest offset and every offset <= ``neg_to`` that of the smallest.
    ``buckets``: :func:`offset_buckets` (index ``offset + q_span - 1``). Beyond ``max_distance`` the bucket is
    constant, so a chunk pair that lies wholly in a tail has one bias per head."""
    offsets = np.arange(buckets.size) - (q_span - 1)
    changes_pos = np.nonzero(buckets != buckets[-1])[0]
    changes_neg = np.nonzero(buckets != buckets[0])[0]
    pos_from = int(offsets[changes_pos[-1] + 1]) if changes_pos.size else int(offsets[0])
    neg_to = int(offsets[changes_neg[0] - 1]) if changes_neg.size else int(offsets[-1])
    return pos_from, neg_to


def _add_chunk_bias(logits, qc, kc, table, lookup, settings):
    """``logits`` [b, h, cq, ck] plus the mask and the position bias of one chunk pair, as the plain path adds
    them. A pair wholly in a tail of the bucketing (:func:`constant_tails`: all its offsets beyond
    ``max_distance`` on one side, most pairs of a long protein) adds one table entry per head, with no per-pair
    bucket gather: the same numbers, for a fraction of the work (``scripts/bench_long_proteins.py``)."""
    q_index, k_index = qc["index"], kc["index"]
    visible = kc["valid"][:, None, :]                                            # [b, 1, ck]
    if "seg" in qc:
        visible = visible & (qc["seg"][:, :, None] == kc["seg"][:, None, :])
    if settings["causal"]:
        visible = visible & (k_index[None, None, :] <= q_index[None, :, None])
    logits = logits + jnp.where(visible, 0.0, NEG_INF).astype(jnp.float32)[:, None]   # [b, 1, cq or 1, ck]
    if table is None:
        return logits
    if lookup is None:
        kw = {"bidirectional": settings["bidirectional"], "num_buckets": settings["num_buckets"],
              "max_distance": settings["max_distance"]}
        rel = kc["pos"][:, None, :] - qc["pos"][:, :, None]                      # [b, cq, ck]
        buckets = relative_position_bucket(rel, xp=jnp, **kw)
        return logits + jnp.moveaxis(jnp.take(table, buckets, axis=1), 1, 0).astype(jnp.float32)

    def gathered(x):
        rel = k_index[None, :] - q_index[:, None]                                # [cq, ck]
        buckets = jnp.take(lookup, rel + settings["q_span"] - 1)
        return x + jnp.take(table, buckets, axis=1)[None].astype(jnp.float32)   # [1, h, cq, ck]

    pos_from, neg_to = settings["tails"]
    in_pos_tail = k_index[0] - q_index[-1] >= pos_from                          # the pair's smallest offset
    in_neg_tail = k_index[-1] - q_index[0] <= neg_to                            # and its largest

    def constant(x):
        bucket = jnp.where(in_pos_tail, lookup[-1], lookup[0])
        return x + jnp.take(table, bucket, axis=1).astype(jnp.float32)[None, :, None, None]

    return jax.lax.cond(in_pos_tail | in_neg_tail, constant, gathered, logits)


def dropout_keep(rng, q_chunk, k_chunk, shape, rate: float):
    """The dropout factor (0 or ``1 / (1 - rate)``) of one chunk pair, from ``rng`` folded with both chunk
    indices (so a test can rebuild the whole mask)."""
    key = jax.random.fold_in(jax.random.fold_in(rng, q_chunk), k_chunk)
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(jnp.float32) / np.float32(1.0 - rate)


@struct.dataclass
class ChunkedBias:
    """What a layer needs besides ``q, k, v`` to call :func:`chunked_attention`: a pytree (arrays as leaves, the
    settings static), so it can be passed through ``nn.scan`` / ``nn.remat`` where a materialised bias would go."""

    bias_table: Any = None
    key_mask: Any = None
    q_positions: Any = None
    k_positions: Any = None
    q_segment_ids: Any = None
    k_segment_ids: Any = None
    bidirectional: bool = struct.field(pytree_node=False, default=True)
    num_buckets: int = struct.field(pytree_node=False, default=32)
    max_distance: int = struct.field(pytree_node=False, default=128)
    causal: bool = struct.field(pytree_node=False, default=False)
    chunk_size: int = struct.field(pytree_node=False, default=DEFAULT_CHUNK_SIZE)
    query_chunk_size: int | None = struct.field(pytree_node=False, default=None)

    def attend(self, q, k, v, *, dropout_rate: float = 0.0, dropout_rng=None):
        return chunked_attention(
            q, k, v, bias_table=self.bias_table, bidirectional=self.bidirectional, num_buckets=self.num_buckets,
            max_distance=self.max_distance, key_mask=self.key_mask, q_positions=self.q_positions,
            k_positions=self.k_positions, q_segment_ids=self.q_segment_ids, k_segment_ids=self.k_segment_ids,
            causal=self.causal, chunk_size=self.chunk_size, query_chunk_size=self.query_chunk_size,
            dropout_rate=dropout_rate, dropout_rng=dropout_rng)


def full_bias_bytes(heads: int, q_len: int, k_len: int, batch: int = 1) -> int:
    """Bytes of one float32 ``[batch, heads, q_len, k_len]`` score tensor: what the plain path materialises."""
    return 4 * batch * heads * q_len * k_len


__all__ = ["DEFAULT_CHUNK_SIZE", "ChunkedBias", "chunked_attention", "constant_tails", "dropout_keep",
           "full_bias_bytes", "offset_buckets"]
