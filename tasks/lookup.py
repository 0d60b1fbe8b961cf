"""Embedding nearest-neighbour lookup (EAT / ProtTucker style): accuracy per CATH level C, A, T, H.

Each query protein takes the CATH label of its most cosine-similar protein in the lookup set (mean-pooled
per-residue embeddings); a query counts as correct at a level when the labels agree up to that level. The layout of
``proteinea/nearest_neighbor_search`` is not documented anywhere public, so every name is gin-bindable: ``lookup``
(the lookup set, default ``lookup.csv``), ``queries`` (``test.csv``), columns ``sequence`` and ``label`` (CATH
codes like ``1.10.8.10``). Nothing is trained. Gin: ``configs/downstream/lookup.gin``.
"""

from __future__ import annotations

import gin
import numpy as np

from ankh_jax.downstream.metrics import cosine_nearest, lookup_accuracy
from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def lookup_task(data_dir: str = gin.REQUIRED, lookup: str = "lookup.csv", queries=(("cath", "test.csv"),),
                sequence_column: str = "sequence", label_column: str = "label",
                max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="lookup", kind="lookup", metric="lookup_accuracy", data_dir=data_dir, train=lookup,
                    valid=None, tests=tuple(tuple(q) for q in queries), sequence_column=sequence_column,
                    label_column=label_column, valid_fraction=0.0, max_length=max_length)


@gin.configurable(denylist=["data", "encoder", "model_dir", "seed", "progress"])
def run_lookup(data, encoder, *, model_dir: str, seed: int = 0, progress: bool = True,
               batch_tokens: int = 16384) -> dict:
    from ankh_jax.inference.embedding import embed_sequences

    def pooled(sequences):
        return np.stack(embed_sequences(encoder.config, encoder.params, sequences, pooling="mean",
                                        batch_tokens=batch_tokens, progress=progress))

    db = data.splits["train"]
    db_emb = pooled(db.sequences)
    tests = {}
    for name in data.test_names():
        split = data.splits[name]
        nearest = cosine_nearest(pooled(split.sequences), db_emb)
        tests[name[len("test/"):]] = lookup_accuracy(split.labels, [db.labels[i] for i in nearest])
    return {"tests": tests, "lookup_set_size": len(db.sequences)}
