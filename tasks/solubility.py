"""Solubility (binary): per-sequence accuracy.

Layout of ``proteinea/solubility``: ``train.csv``, ``validation.csv``, ``test.csv``; columns ``sequences`` and
``labels`` (0/1). Gin: ``configs/downstream/solubility.gin``.
"""

from __future__ import annotations

import gin

from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def solubility_task(data_dir: str = gin.REQUIRED, train: str = "train.csv", valid: str = "validation.csv",
                    test: str = "test.csv", sequence_column: str = "sequences", label_column: str = "labels",
                    max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="solubility", kind="sequence_binary", metric="accuracy", data_dir=data_dir, train=train,
                    valid=valid, tests=(("solubility", test),), sequence_column=sequence_column,
                    label_column=label_column, max_length=max_length)
