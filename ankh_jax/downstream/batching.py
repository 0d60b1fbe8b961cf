"""Fixed-shape batches for head training: sequences grouped by length bucket, padded, labels padded to match.

A batch is a dict of numpy arrays:

* ``inputs``: float32 [B, T, d] embeddings (frozen mode) or int32 [B, T + 1] token ids with ``</s>`` (full mode);
* ``mask``: int32 [B, T], 1 on residues;
* ``labels``: the label kind's ``label_array`` (``ankh_jax.downstream.kinds``): int32 [B] / float32 [B] /
  float32 [B, n] / int32 [B, T] / int32 [B, T, T], ignored entries -100 (integer labels);
* ``weights``: float32 [B], 0 for the empty rows that fill the last batch of a bucket.

T is a bucket length (powers of two from ``min_bucket``), so a whole run compiles a handful of shapes; which
examples share a batch is ``ankh_jax.data.batching.plan_row_batches``. This module fills the arrays and pads the
labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from ankh_jax.data.batching import plan_row_batches
from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.downstream.kinds import LabelKind
from ankh_jax.downstream.task_spec import Examples


def make_batches(examples: Examples, kind: LabelKind, *, batch_size: int, embeddings: Callable[[str], np.ndarray] | None,
                 num_classes: int | None = None, shuffle_rng: np.random.Generator | None = None,
                 min_bucket: int = 32, max_tokens: int | None = None, min_separation: int = 6
                 ) -> Iterator[tuple[list[int], dict]]:
    """Yields ``(example indices, batch)``; with ``embeddings`` None the inputs are token ids (full mode).

    Batches hold ``batch_size`` sequences, fewer for long buckets when ``max_tokens`` caps B x T (rows stay a power
    of two, so shapes stay few). With ``shuffle_rng``, the order of examples within buckets and of batches is
    shuffled (training); otherwise it is deterministic (evaluation).
    """
    tokenizer = AnkhTokenizer()
    plan = plan_row_batches([len(s) for s in examples.sequences], batch_size=batch_size, max_tokens=max_tokens,
                            smallest_bucket=min_bucket, shuffle_rng=shuffle_rng)
    for t, rows, idx in plan:
        mask = np.zeros((rows, t), np.int32)
        if embeddings is not None:
            first = embeddings(examples.sequences[idx[0]])
            inputs = np.zeros((rows, t, first.shape[1]), np.float32)
        else:
            inputs = np.zeros((rows, t + 1), np.int32)
        for r, i in enumerate(idx):
            seq = examples.sequences[i]
            n = len(seq)
            mask[r, :n] = 1
            if embeddings is not None:
                inputs[r, :n] = embeddings(seq)
            else:
                inputs[r, :n + 1] = tokenizer.encode(seq, clean=False)
        weights = np.zeros(rows, np.float32)
        weights[:len(idx)] = 1.0
        labels = kind.label_array([examples.labels[i] for i in idx], rows, t, num_classes, min_separation)
        yield idx, {"inputs": inputs, "mask": mask, "labels": labels, "weights": weights}


def count_batches(examples: Examples, *, batch_size: int, min_bucket: int = 32, max_tokens: int | None = None
                  ) -> int:
    return len(plan_row_batches([len(s) for s in examples.sequences], batch_size=batch_size, max_tokens=max_tokens,
                                smallest_bucket=min_bucket))
