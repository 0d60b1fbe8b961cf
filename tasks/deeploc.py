"""Subcellular localization (DeepLoc, 10 classes): per-sequence accuracy.

Layout of ``proteinea/deeploc``: splits train / test (no validation: a deterministic ``valid_fraction`` of
training is held out). Columns ``input`` (sequence) and ``loc`` (class name). Point ``train`` / ``test`` at the
local CSV files or at ``save_to_disk`` split directories. Gin: ``configs/downstream/deeploc.gin``.
"""

from __future__ import annotations

import gin

from ankh_jax.downstream.task_spec import TaskSpec


@gin.configurable
def deeploc_task(data_dir: str = gin.REQUIRED, train: str = "train.csv", valid: str | None = None,
                 test: str = "test.csv", sequence_column: str = "input", label_column: str = "loc",
                 valid_fraction: float = 0.1, max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="deeploc", kind="sequence_class", metric="accuracy", data_dir=data_dir, train=train,
                    valid=valid, tests=(("deeploc", test),), sequence_column=sequence_column,
                    label_column=label_column, valid_fraction=valid_fraction, max_length=max_length)
