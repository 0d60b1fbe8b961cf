"""Length buckets and batch plans: the one planner behind every batched pass over sequences of varying length.

Sequences are padded to a few bucket lengths, so a jitted function compiles once per bucket rather than once per
batch, and every batch of a bucket has the same number of rows (a short one is filled with dummy rows). Padding
never changes a result: the models mask pad positions. Two bucket ladders:

* :func:`length_buckets` (inference: embedding, scoring, infilling, decoding): 32..96 by 16s, then 1, 1.25 and
  1.5 times powers of two, so padding wastes at most a quarter; :func:`plan_batches` fills each bucket's batches
  up to a token budget (``batch_tokens`` padded tokens), longest sequences first;
* :func:`power_of_two_buckets` (fine-tuning): a handful of shapes for a whole training run;
  :func:`plan_row_batches` gives each bucket ``batch_size`` rows, halved while rows x length exceeds
  ``max_tokens``, in input order or shuffled.

Pure numpy and no model imports: it only plans indices; the callers pad and fill the arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_BATCH_TOKENS = 8192


def length_buckets(longest: int) -> list[int]:
    """Padded lengths (tokens): 32..96 by 16s-32s, then 1, 1.25, 1.5 x powers of two (padding waste <= 25%)."""
    buckets = [32, 48, 64, 80, 96]
    k = 128
    while buckets[-1] < longest:
        buckets += [k, k * 5 // 4, k * 3 // 2]
        k *= 2
    return buckets


def power_of_two_buckets(longest: int, smallest: int = 32) -> list[int]:
    """``smallest``, twice that, ... up to the first one that holds ``longest``."""
    buckets = [smallest]
    while buckets[-1] < longest:
        buckets.append(buckets[-1] * 2)
    return buckets


def bucket_for(n_tokens: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n_tokens``."""
    for b in buckets:
        if b >= n_tokens:
            return b
    raise ValueError(f"{n_tokens} tokens exceed the largest bucket {buckets[-1]}")


def power_of_two_bucket(n_tokens: int, smallest: int = 32) -> int:
    """The fine-tuning bucket of one sequence: the first power-of-two multiple of ``smallest`` that holds it."""
    return bucket_for(n_tokens, power_of_two_buckets(n_tokens, smallest))


def group_by_bucket(lengths: Sequence[int], buckets: Sequence[int],
                    order: Sequence[int] | None = None) -> dict[int, list[int]]:
    """``{bucket: [indices]}``, each list in ``order`` (default: input order)."""
    groups: dict[int, list[int]] = {}
    for i in range(len(lengths)) if order is None else order:
        groups.setdefault(bucket_for(int(lengths[i]), buckets), []).append(int(i))
    return groups


def plan_batches(token_lengths: Sequence[int], *, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 buckets: Sequence[int] | None = None, row_multiple: int = 1) -> list[tuple[int, list[int]]]:
    """The token-budget plan: ``[(padded_length, [sequence indices]), ...]``, longest first.

    Inside a bucket the sequences (sorted by length) are split into equal-sized batches of at most
    ``batch_tokens // padded_length`` rows (at least one), so a bucket has a single batch shape.
    ``row_multiple`` (the number of devices a batch is split over): ``batch_tokens`` is then the budget of each
    device, and a batch's rows are a multiple of it (:func:`batch_rows` pads with dummy rows), so every device
    gets rows of the same bucket.
    """
    return [(width, members) for width, _, members in
            plan_window_batches(token_lengths, batch_tokens=batch_tokens, buckets=buckets, row_multiple=row_multiple)]


def plan_window_batches(token_lengths: Sequence[int], *, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                        buckets: Sequence[int] | None = None, row_multiple: int = 1, few_shapes: bool = False
                        ) -> list[tuple[int, int, list[int]]]:
    """:func:`plan_batches` with the rows of each batch: ``[(padded_length, rows, [indices]), ...]``, rows a
    multiple of ``row_multiple`` (the devices), dummy rows filling the rest.

    ``few_shapes`` (a FASTA streamed in windows): each bucket's rows are rounded up to a multiple of about an eighth
    of its budget (a power of two per device), so window after window reuses at most nine compiled shapes per
    bucket instead of compiling new row counts for every window; padding grows by less than an eighth of a
    batch. Without it the rows are exactly those of :func:`plan_batches` (the fewest dummy rows)."""
    lengths = np.asarray(token_lengths)
    if buckets is None:
        buckets = length_buckets(int(lengths.max(initial=1)))
    groups = group_by_bucket(lengths, buckets, np.argsort(-lengths, kind="stable"))
    plan = []
    for width in sorted(groups, reverse=True):
        members = groups[width]
        per_device = max(1, batch_tokens // width)
        step = 1 << (max(1, per_device // 8).bit_length() - 1) if few_shapes else 1
        per_device = per_device // step * step
        n_batches = -(-len(members) // (per_device * row_multiple))
        rows = -(-len(members) // n_batches)
        padded = -(-rows // (step * row_multiple)) * step * row_multiple
        plan += [(width, padded, members[j: j + rows]) for j in range(0, len(members), rows)]
    return plan


def batch_rows(plan: list[tuple[int, list[int]]], row_multiple: int = 1) -> dict[int, int]:
    """The fixed number of rows of each bucket's batches, a multiple of ``row_multiple`` (a short batch is padded
    with dummy rows)."""
    rows: dict[int, int] = {}
    for width, members in plan:
        rows[width] = max(rows.get(width, 0), -(-len(members) // row_multiple) * row_multiple)
    return rows


def capped_rows(width: int, batch_size: int, max_tokens: int | None) -> int:
    """Rows per batch of a bucket: ``batch_size``, halved while rows x ``width`` exceeds ``max_tokens`` (at least
    1), so a long bucket's batches stay within the budget with one shape per bucket."""
    rows = batch_size
    while max_tokens and rows > 1 and rows * width > max_tokens:
        rows //= 2
    return rows


def plan_row_batches(lengths: Sequence[int], *, batch_size: int, max_tokens: int | None = None,
                     smallest_bucket: int = 32, shuffle_rng: np.random.Generator | None = None
                     ) -> list[tuple[int, int, list[int]]]:
    """The fixed-rows plan of fine-tuning: ``[(padded_length, rows, [indices]), ...]``.

    Buckets are :func:`power_of_two_buckets`; each is cut into batches of :func:`capped_rows` rows (the last one
    may hold fewer indices). Without ``shuffle_rng`` the plan is deterministic (shortest bucket first, input order
    inside); with it, the order inside each bucket and then the order of the batches are shuffled.
    """
    buckets = power_of_two_buckets(max((int(n) for n in lengths), default=0), smallest_bucket)
    groups = group_by_bucket(lengths, buckets)
    plan = []
    for width in sorted(groups):
        members = groups[width]
        rows = capped_rows(width, batch_size, max_tokens)
        if shuffle_rng is not None:
            shuffle_rng.shuffle(members)
        plan += [(width, rows, members[s:s + rows]) for s in range(0, len(members), rows)]
    if shuffle_rng is not None:
        plan = [plan[i] for i in shuffle_rng.permutation(len(plan))]
    return plan


def assign_shards(lengths: Sequence[int], num_shards: int) -> np.ndarray:
    """The shard (0..``num_shards``-1) of each sequence, balanced by residues: longest first (ties by index), dealt
    to the shards in a snake (0, 1, ..., N-1, N-1, ..., 0, 0, 1, ...), so the shards' residue totals differ by less
    than the longest sequence. A function of the lengths alone, so every host computes the same split
    whatever order the shards are launched in."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    rank = np.arange(len(lengths)) % (2 * num_shards)
    snake = np.where(rank < num_shards, rank, 2 * num_shards - 1 - rank)
    shards = np.empty(len(lengths), np.int64)
    shards[order] = snake
    return shards
