"""Fluorescence (TAPE, GFP variants): regression on ``log_fluorescence``, Spearman correlation.

Layout of ``proteinea/fluorescence``: ``train.csv``, ``validation.csv``, ``test.csv``; columns ``primary`` and
``log_fluorescence`` (already log-scaled). The regression head's output bias starts at the training mean.
Gin: ``configs/downstream/fluorescence.gin``.
"""

from __future__ import annotations

import gin

from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def fluorescence_task(data_dir: str = gin.REQUIRED, train: str = "train.csv", valid: str = "validation.csv",
                      test: str = "test.csv", sequence_column: str = "primary",
                      label_column: str = "log_fluorescence", max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="fluorescence", kind="sequence_regression", metric="spearman", data_dir=data_dir,
                    train=train, valid=valid, tests=(("fluorescence", test),), sequence_column=sequence_column,
                    label_column=label_column, max_length=max_length)
