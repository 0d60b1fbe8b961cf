"""Pfam family classification on the shipped real proteins (11 families; the repository's own real-data task).

Files: ``pfam_family_{train,valid,test}.csv`` of ``ankh_jax.sample_data`` (the checkout's ``data/``) with columns
``id,sequence,label`` (see data/README.md for provenance); majority-class baseline ~44% (globins). Metric:
accuracy. Gin: ``configs/downstream/pfam_family.gin``.
"""

from __future__ import annotations

import os
from importlib import resources

import gin

from ankh_jax.downstream.task_spec import TaskSpec

SHIPPED_DATA = os.fspath(resources.files("ankh_jax.sample_data"))  # the checkout's data/, installed or not


@gin.configurable
def pfam_family_task(data_dir: str = SHIPPED_DATA, train: str = "pfam_family_train.csv",
                     valid: str = "pfam_family_valid.csv", test: str = "pfam_family_test.csv",
                     sequence_column: str = "sequence", label_column: str = "label",
                     max_length: int | None = None) -> TaskSpec:
    return TaskSpec(name="pfam_family", kind="sequence_class", metric="accuracy", data_dir=data_dir, train=train,
                    valid=valid, tests=(("pfam_family", test),), sequence_column=sequence_column,
                    label_column=label_column, max_length=max_length)
