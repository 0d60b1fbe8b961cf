"""The one batching planner (ankh_jax.data.batching): the inference token-budget plan and fine-tuning's plan."""

import numpy as np

from ankh_jax.data import batching
from ankh_jax.data.fasta import load_fasta


def test_batch_plan_has_few_shapes_and_respects_the_budget(sample_fasta):
    lengths = [len(r.sequence) + 1 for r in load_fasta(sample_fasta)]
    plan = batching.plan_batches(lengths, batch_tokens=4096)
    seen = sorted(i for _, members in plan for i in members)
    assert seen == list(range(len(lengths)))  # every sequence exactly once
    rows = batching.batch_rows(plan)
    assert len(rows) <= 16  # one batch shape per bucket: a handful of compiles for 1,446 proteins
    for width, members in plan:
        assert all(lengths[i] <= width for i in members)
        assert rows[width] * width <= 4096 or rows[width] == 1
    padded = sum(rows[w] * w for w, _ in plan)
    assert padded < 1.35 * sum(lengths)  # bucket rounding and short last batches waste little
    assert [w for w, _ in plan] == sorted((w for w, _ in plan), reverse=True)  # longest first


def test_buckets_and_lookup():
    assert batching.length_buckets(100) == [32, 48, 64, 80, 96, 128, 160, 192]
    assert batching.power_of_two_buckets(100) == [32, 64, 128]
    assert [batching.power_of_two_bucket(n) for n in (0, 1, 32, 33, 64, 65, 700)] == [32, 32, 32, 64, 64, 128, 1024]
    assert batching.bucket_for(49, batching.length_buckets(49)) == 64
    assert batching.capped_rows(512, 16, 8192) == 16
    assert batching.capped_rows(1024, 16, 8192) == 8
    assert batching.capped_rows(16384, 16, 8192) == 1
    assert batching.capped_rows(16384, 16, None) == 16


def _row_plan_reference(lengths, batch_size, max_tokens, rng):
    """Fine-tuning's plan as it was written before the planner was shared (power-of-two buckets from 32)."""
    buckets = {}
    for i, n in enumerate(lengths):
        t = 32
        while t < n:
            t *= 2
        buckets.setdefault(t, []).append(i)
    plan = []
    for t, idx in sorted(buckets.items()):
        rows = batch_size
        while max_tokens and rows > 1 and rows * t > max_tokens:
            rows //= 2
        idx = list(idx)
        if rng is not None:
            rng.shuffle(idx)
        plan += [(t, rows, idx[s:s + rows]) for s in range(0, len(idx), rows)]
    if rng is not None:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def test_fine_tuning_plan_is_unchanged():
    lengths = list(np.random.default_rng(0).integers(1, 1500, 300))
    for seed in (None, 1, 2):
        ours = batching.plan_row_batches(lengths, batch_size=16, max_tokens=8192,
                                         shuffle_rng=None if seed is None else np.random.default_rng(seed))
        ref = _row_plan_reference(lengths, 16, 8192, None if seed is None else np.random.default_rng(seed))
        assert ours == ref
