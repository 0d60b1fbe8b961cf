"""Secondary structure prediction, Q3 and Q8: per-residue accuracy over scored residues.

Layout of ``proteinea/secondary_structure_prediction`` (one CSV per set; their schemas differ, so each is read
alone): ``training_hhblits.csv`` (train), test sets ``CASP12.csv``, ``CASP14.csv``, ``CB513.csv``, ``TS115.csv``.
Columns: ``input`` (sequence), ``dssp3`` / ``dssp8`` (one letter per residue), ``disorder`` (space-separated
floats per residue, 0.0 = not scored). There is no validation file: a deterministic ``valid_fraction`` of training
(by sequence hash) is held out. Class ids follow first appearance in training unless ``classes`` is bound.
Gin: ``configs/downstream/ssp3.gin``, ``ssp8.gin``.
"""

from __future__ import annotations

import gin

from ankh_jax.downstream.task_spec import TaskSpec

TEST_SETS = (("CASP12", "CASP12.csv"), ("CASP14", "CASP14.csv"), ("CB513", "CB513.csv"), ("TS115", "TS115.csv"))


def _ssp(name, label_column, data_dir, train, valid, tests, sequence_column, mask_column, classes, valid_fraction,
         max_length):
    return TaskSpec(name=name, kind="residue_class", metric="accuracy", data_dir=data_dir, train=train,
                    valid=valid, tests=tuple(tuple(t) for t in tests), sequence_column=sequence_column,
                    label_column=label_column, mask_column=mask_column or None,
                    classes=tuple(classes) if classes else None, valid_fraction=valid_fraction,
                    max_length=max_length)


@gin.configurable
def ssp3_task(data_dir: str = gin.REQUIRED, train: str = "training_hhblits.csv", valid: str | None = None,
              tests=TEST_SETS, sequence_column: str = "input", label_column: str = "dssp3",
              mask_column: str | None = "disorder", classes=None, valid_fraction: float = 0.05,
              max_length: int | None = None) -> TaskSpec:
    return _ssp("ssp3", label_column, data_dir, train, valid, tests, sequence_column, mask_column, classes,
                valid_fraction, max_length)


@gin.configurable
def ssp8_task(data_dir: str = gin.REQUIRED, train: str = "training_hhblits.csv", valid: str | None = None,
              tests=TEST_SETS, sequence_column: str = "input", label_column: str = "dssp8",
              mask_column: str | None = "disorder", classes=None, valid_fraction: float = 0.05,
              max_length: int | None = None) -> TaskSpec:
    return _ssp("ssp8", label_column, data_dir, train, valid, tests, sequence_column, mask_column, classes,
                valid_fraction, max_length)
