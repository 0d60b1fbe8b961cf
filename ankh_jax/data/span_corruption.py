"""Ankh's pretraining objective as seqio preprocessors, and the knobs of the paper's ablations.

Ankh's objective is "1-gram span partial de-masking": T5 span corruption with spans of one residue. From a protein
``A B C D E F G`` with C and G masked::

    inputs  = A B <extra_id_0> D E F <extra_id_1> </s>
    targets = <extra_id_0> C <extra_id_1> G </s>

Sentinel ``<extra_id_k>`` has id ``143 - k`` (:func:`ankh_jax.data.tokenizer.sentinel_id`), so sentinels count down
from the top of the vocabulary. A task's preprocessors, in order (see ``tasks/pretraining.py``)::

    tokenize_residues -> random_crop -> span_corruption -> seqio.preprocessors.append_eos_after_trim

How the noise mask is drawn (``num_noise = round(n * noise_density)`` clipped to ``[1, n - 1]``, exactly, for a
sequence of ``n`` residues):

* ``mean_noise_span_length == 1`` (Ankh): ``num_noise`` positions drawn uniformly without replacement. Two masked
  residues may be neighbours; each gets its own sentinel unless ``merge_adjacent_spans`` joins every run of
  neighbouring masked residues into one span (one sentinel, several target residues).
* ``mean_noise_span_length > 1`` (the paper's 3-gram ablation): T5's scheme: ``round(num_noise / mean)`` spans with
  random lengths, separated by non-empty random stretches of unmasked residues. Spans never touch, so
  ``merge_adjacent_spans`` changes nothing there.
* ``full_reconstruction`` (ProtT5-style, the paper's "15% full reconstruction" ablation): inputs as above, targets
  the whole uncorrupted sequence.

Randomness is stateless (``tf.random.stateless_*``), keyed per example: by the ``EXAMPLE_SEED_KEY`` feature when the
example carries one (the resumable input pipeline puts ``(epoch key, example index)`` there, which is what makes a
restart continue bit-identically), otherwise by seqio's per-map seeds (``seqio.map_seed_manager``), so the
preprocessors also work in plain ``seqio.get_dataset`` / t5x. Either way the output is a pure function of the seed.

Ankh's vocabulary has 116 sentinels. A crop of 511 residues at 20% density masks 102 of them; knobs that would
need more than 116 spans are rejected before any data is read (:func:`check_sentinel_budget`), and with
``merge_adjacent_spans`` (where the count is random) an example that would overflow fails with an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import gin
import seqio
import tensorflow as tf

from ankh_jax.data.tokenizer import FIRST_RESIDUE_ID, NUM_SENTINELS, RESIDUES, VOCAB_SIZE
from ankh_jax.errors import InputError

EXAMPLE_SEED_KEY = "_example_seed"

# byte value -> token id (-1: not a residue); residues are stored cleaned (upper case, Ankh's 25 letters).
_BYTE_TABLE = [-1] * 256
for _i, _r in enumerate(RESIDUES):
    _BYTE_TABLE[ord(_r)] = FIRST_RESIDUE_ID + _i


# ----------------------------------------------------------------------------------------------- the arithmetic

def num_noise_tokens(length: int, noise_density: float) -> int:
    """``round(length * density)`` (half up) clipped to ``[1, length - 1]``; 0 when ``length < 2``.

    The TensorFlow code computes the same quantity in float64 with the same rounding, so the two always agree.
    """
    if length < 2:
        return 0
    return min(max(math.floor(length * noise_density + 0.5), 1), length - 1)


def num_noise_spans(length: int, noise_density: float, mean_noise_span_length: float) -> int:
    """Spans before any merging: one per masked residue at mean 1, else ``round(num_noise / mean)`` (>= 1)."""
    noise = num_noise_tokens(length, noise_density)
    if noise == 0:
        return 0
    if mean_noise_span_length == 1:
        return noise
    spans = max(math.floor(noise / mean_noise_span_length + 0.5), 1)
    return min(spans, length - noise)


def targets_length_for(inputs_length: int, *, noise_density: float | None = None,
                       mean_noise_span_length: float | None = None, full_reconstruction: bool | None = None,
                       merge_adjacent_spans: bool | None = None) -> int:
    """The longest ``targets`` (with ``</s>``) that :func:`span_corruption` makes for ``inputs_length`` inputs.

    The counterpart of t5's ``random_spans_helper``: ``inputs_length`` counts ``</s>``, so random crops keep
    ``n = inputs_length - 1`` residues, and targets are ``num_noise + num_spans + 1`` tokens (the whole sequence,
    ``n + 1``, for full reconstruction). With merging, the span count is random but never larger, so this stays an
    upper bound. Knobs left ``None`` take :func:`span_corruption`'s effective values, gin bindings included,
    e.g. Ankh's defaults: 512 -> 205 (102 masked residues, 102 sentinels, ``</s>``).
    """
    knobs = effective_knobs(noise_density=noise_density, mean_noise_span_length=mean_noise_span_length,
                            full_reconstruction=full_reconstruction, merge_adjacent_spans=merge_adjacent_spans)
    n = inputs_length - 1
    if knobs["full_reconstruction"]:
        return n + 1
    return (num_noise_tokens(n, knobs["noise_density"])
            + num_noise_spans(n, knobs["noise_density"], knobs["mean_noise_span_length"]) + 1)


def check_sentinel_budget(inputs_length: int, noise_density: float, mean_noise_span_length: float,
                          merge_adjacent_spans: bool = False) -> None:
    """Raises if a crop of ``inputs_length - 1`` residues would need more sentinels than Ankh's 116.

    With ``merge_adjacent_spans`` the count is random (merging only lowers it), so only the in-graph check of
    :func:`span_corruption` can fail, and then only for an unlucky example; here it is the expected count that
    must fit.
    """
    n = inputs_length - 1
    spans = num_noise_spans(n, noise_density, mean_noise_span_length)
    if merge_adjacent_spans and mean_noise_span_length == 1:
        noise = num_noise_tokens(n, noise_density)
        spans = math.ceil(noise * (1 - noise_density))  # runs of a Bernoulli-like mask: about noise * (1 - p)
    if spans > NUM_SENTINELS:
        raise InputError(
            f"span corruption of {n} residues at noise_density={noise_density} with "
            f"mean_noise_span_length={mean_noise_span_length} needs {spans} sentinels, but Ankh's vocabulary has "
            f"{NUM_SENTINELS}: lower the density or the inputs length, lengthen the spans, or merge adjacent spans")


# -------------------------------------------------------------------------------------------------- TF helpers

def _uses_example_seeds(dataset: tf.data.Dataset) -> bool:
    return EXAMPLE_SEED_KEY in dataset.element_spec


def _map_with_seed(dataset: tf.data.Dataset, fn, salt: int) -> tf.data.Dataset:
    """Maps ``fn(example, seed)`` with a per-example seed (see the module docstring); ``salt`` separates users."""
    if _uses_example_seeds(dataset):
        def with_example_seed(x):
            seed = tf.random.experimental.stateless_fold_in(tf.cast(x[EXAMPLE_SEED_KEY], tf.int64), salt)
            return fn(x, seed)
        return dataset.map(with_example_seed, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    @seqio.map_over_dataset(num_seeds=1)
    def with_seqio_seed(x, seed):
        return fn(x, seed)
    return with_seqio_seed(dataset)


def _random_partition(total, num_parts, seed):
    """Lengths of ``num_parts`` non-empty parts of ``total`` items, uniformly among such partitions (T5's scheme)."""
    # Choose num_parts - 1 cut points among the total - 1 gaps.
    gaps = tf.maximum(total - 1, 0)
    cuts = tf.maximum(num_parts - 1, 0)
    order = tf.argsort(tf.random.stateless_uniform([gaps], seed=seed))
    is_cut = tf.scatter_nd(order[:cuts, None], tf.ones([cuts], tf.int32), [gaps])
    segment = tf.concat([[0], tf.cumsum(is_cut)], axis=0)[:total]
    return tf.math.unsorted_segment_sum(tf.ones([total], tf.int32), segment, num_parts)


def noise_mask(length, seed, noise_density: float, mean_noise_span_length: float):
    """Boolean ``[length]`` mask with exactly :func:`num_noise_tokens` ones (see the module docstring)."""
    length = tf.convert_to_tensor(length, tf.int32)
    n64 = tf.cast(length, tf.float64)
    noise = tf.cast(tf.floor(n64 * noise_density + 0.5), tf.int32)
    noise = tf.where(length < 2, 0, tf.clip_by_value(noise, 1, tf.maximum(length - 1, 1)))
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if mean_noise_span_length == 1:
        order = tf.argsort(tf.random.stateless_uniform([length], seed=seed_a))
        return tf.scatter_nd(order[:noise, None], tf.ones([noise], tf.int32), [length]) > 0
    spans = tf.cast(tf.floor(tf.cast(noise, tf.float64) / mean_noise_span_length + 0.5), tf.int32)
    spans = tf.minimum(tf.maximum(spans, 1), tf.maximum(length - noise, 1))
    spans = tf.where(noise == 0, 0, spans)
    noise_lengths = _random_partition(noise, spans, seed_a)
    # The kept residues form spans + 1 stretches, the inner ones non-empty (spans never touch) and the outer two
    # possibly empty (a span may open or close the sequence): a partition of kept + 2 into spans + 1 parts, less
    # one at each end. Unlike T5 (which always starts with kept residues and ends with a span) every position is
    # masked at close to the nominal density.
    keep_lengths = (_random_partition(length - noise + 2, spans + 1, seed_b)
                    - tf.one_hot(0, spans + 1, dtype=tf.int32) - tf.one_hot(spans, spans + 1, dtype=tf.int32))
    interleaved = tf.reshape(tf.stack([keep_lengths, tf.pad(noise_lengths, [[0, 1]])], axis=1), [-1])[:-1]
    starts = tf.cumsum(interleaved, exclusive=True)
    # A zero-length stretch shares its start with the next one: the flags add up and parity stays right.
    start_flags = tf.scatter_nd(starts[:, None], tf.ones_like(starts), [length + 1])[:length]
    segment = tf.cumsum(start_flags) - 1
    return tf.math.floormod(segment, 2) == 1


def corrupt_with_mask(tokens, mask, *, one_sentinel_per_residue: bool, full_reconstruction: bool = False):
    """(inputs, targets) of ``tokens`` for a given boolean noise ``mask``, both without ``</s>``.

    A span is a run of masked positions (or, with ``one_sentinel_per_residue``, each masked position); span ``k``
    becomes sentinel ``143 - k`` in the inputs, and ``sentinel, residues of the span`` in the targets.
    """
    tokens = tf.convert_to_tensor(tokens, tf.int32)
    mask = tf.convert_to_tensor(mask, tf.bool)
    starts = mask if one_sentinel_per_residue else mask & ~tf.pad(mask[:-1], [[1, 0]])
    span_count = tf.reduce_sum(tf.cast(starts, tf.int32))
    check = tf.debugging.assert_less_equal(
        span_count, NUM_SENTINELS, message=f"span corruption needs more than {NUM_SENTINELS} sentinels")
    with tf.control_dependencies([check]):
        sentinels = VOCAB_SIZE - tf.cumsum(tf.cast(starts, tf.int32))  # the first span gets 143
    inputs = tf.boolean_mask(tf.where(starts, sentinels, tokens), ~mask | starts)
    if full_reconstruction:
        return inputs, tokens
    pairs = tf.stack([tf.boolean_mask(sentinels, mask), tf.boolean_mask(tokens, mask)], axis=1)
    keep = tf.stack([tf.boolean_mask(starts, mask), tf.ones_like(tf.boolean_mask(mask, mask))], axis=1)
    return inputs, tf.boolean_mask(tf.reshape(pairs, [-1]), tf.reshape(keep, [-1]))


# -------------------------------------------------------------------------------------------- the preprocessors

@seqio.map_over_dataset
def _tokenize_example(x, sequence_key: str, output_key: str):
    table = tf.constant(_BYTE_TABLE, tf.int32)
    ids = tf.gather(table, tf.cast(tf.io.decode_raw(x[sequence_key], tf.uint8), tf.int32))
    check = tf.debugging.assert_non_negative(
        ids, message=f"'{sequence_key}' holds a character outside Ankh's residues {RESIDUES} "
                     "(datasets built by scripts/prepare_uniref50.py are cleaned; was this one?)")
    out = {k: v for k, v in x.items() if k != sequence_key}
    with tf.control_dependencies([check]):
        out[output_key] = tf.identity(ids)
    return out


def tokenize_residues(dataset: tf.data.Dataset, sequence_key: str = "sequence",
                      output_key: str = "targets") -> tf.data.Dataset:
    """Cleaned residue strings -> Ankh ids (no ``</s>``), under ``output_key``; other features pass through.

    Equal to ``seqio_vocabulary().encode_tf`` on cleaned sequences (tested) but a byte lookup, several times faster
    than SentencePiece.
    """
    return _tokenize_example(dataset, sequence_key=sequence_key, output_key=output_key)


@gin.configurable
def random_crop(dataset: tf.data.Dataset, sequence_length: Mapping[str, int],
                output_features: Mapping[str, seqio.Feature], feature_key: str = "targets",
                length_key: str = "inputs") -> tf.data.Dataset:
    """Crops ``feature_key`` to a random window that fits ``sequence_length[length_key]`` once ``</s>`` is added."""
    max_len = sequence_length[length_key] - int(output_features[length_key].add_eos)

    def crop(x, seed):
        tokens = x[feature_key]
        n = tf.size(tokens)
        start = tf.random.stateless_uniform([], seed=seed, maxval=tf.maximum(n - max_len, 0) + 1, dtype=tf.int32)
        out = dict(x)
        out[feature_key] = tokens[start: start + max_len]
        return out

    return _map_with_seed(dataset, crop, salt=1)


@gin.configurable
def span_corruption(dataset: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None,
                    output_features: Mapping[str, seqio.Feature] | None = None, *,
                    noise_density: float = 0.2, mean_noise_span_length: float = 1.0,
                    full_reconstruction: bool = False, merge_adjacent_spans: bool = False,
                    input_feature_key: str = "inputs", target_feature_key: str = "targets") -> tf.data.Dataset:
    """Ankh's 1-gram span partial de-masking on ``targets`` (residue ids without ``</s>``) -> inputs/targets.

    The knobs (all gin-bindable as ``span_corruption.<name>``) reproduce the paper's ablations; see the module
    docstring. The output has only ``inputs`` and ``targets``, both without ``</s>`` (added next by
    ``append_eos_after_trim``).
    """
    if not 0 < noise_density < 1:
        raise InputError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_noise_span_length < 1:
        raise InputError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length}")
    if sequence_length is not None and input_feature_key in sequence_length:
        inputs_length = sequence_length[input_feature_key]
        check_sentinel_budget(inputs_length, noise_density, mean_noise_span_length, merge_adjacent_spans)
        needed = targets_length_for(inputs_length, noise_density=noise_density,
                                    mean_noise_span_length=mean_noise_span_length,
                                    full_reconstruction=full_reconstruction, merge_adjacent_spans=False)
        given = sequence_length.get(target_feature_key)
        if given is not None and given < needed and not merge_adjacent_spans:
            raise InputError(
                f"targets length {given} is too short for span corruption of {inputs_length} inputs at "
                f"noise_density={noise_density}, mean_noise_span_length={mean_noise_span_length}, "
                f"full_reconstruction={full_reconstruction}: full-length crops need {needed} (targets would be "
                "cut, losing masked residues); use span_corruption.targets_length_for or leave 'targets' out")

    def corrupt(x, seed):
        tokens = x[target_feature_key]
        mask = noise_mask(tf.size(tokens), seed, noise_density, mean_noise_span_length)
        inputs, targets = corrupt_with_mask(tokens, mask, one_sentinel_per_residue=mean_noise_span_length == 1
                                            and not merge_adjacent_spans, full_reconstruction=full_reconstruction)
        return {input_feature_key: inputs, target_feature_key: targets}

    return _map_with_seed(dataset, corrupt, salt=2)


def effective_knobs(**overrides) -> dict:
    """:func:`span_corruption`'s knob values: its defaults, then gin bindings, then non-None ``overrides``."""
    knobs = {"noise_density": 0.2, "mean_noise_span_length": 1.0, "full_reconstruction": False,
             "merge_adjacent_spans": False}
    bound = gin.get_bindings(span_corruption)
    knobs.update({k: v for k, v in bound.items() if k in knobs})
    knobs.update({k: v for k, v in overrides.items() if v is not None})
    return knobs

