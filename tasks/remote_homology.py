"""Remote homology detection at the fold level (TAPE / SCOPe, 1195 folds): per-sequence accuracy.

Layout of ``proteinea/remote_homology``: ``train.csv``, ``validation.csv``, test ``test_fold_holdout.csv`` (bind
``tests`` to add the superfamily / family holdouts). Columns ``primary`` (sequence), ``fold_label`` (class).
Gin: ``configs/downstream/remote_homology.gin``.
"""

from __future__ import annotations

import gin

from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def remote_homology_task(data_dir: str = gin.REQUIRED, train: str = "train.csv", valid: str = "validation.csv",
                         tests=(("fold", "test_fold_holdout.csv"),), sequence_column: str = "primary",
                         label_column: str = "fold_label", max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="remote_homology", kind="sequence_class", metric="accuracy", data_dir=data_dir,
                    train=train, valid=valid, tests=tuple(tuple(t) for t in tests),
                    sequence_column=sequence_column, label_column=label_column, max_length=max_length)
