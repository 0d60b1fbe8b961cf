"""What a downstream task is: where its files are, which columns hold what, the label kind, head and metric.

Each module in ``tasks/`` returns a :class:`TaskSpec` from a gin-configurable function (``ssp3_task()``,
``deeploc_task()``, ...); :func:`load_task` reads every split into :class:`Examples` with labels encoded for the
head. Label kinds:

==================  ===============================================  ==========================================
kind                label cell                                       encoded as
==================  ===============================================  ==========================================
sequence_class      a class name or number                           int id (classes in order of first
                                                                     appearance in training unless given)
sequence_binary     0/1 (also true/false, 0.0/1.0)                   int 0/1
sequence_regression a number                                         float
sequence_multilabel class names joined by ``multilabel_separator``   multi-hot float32 [n]
residue_class       one letter per residue (``dssp3``)               int [L], -100 where not scored
contact             [L, 3] Cβ coordinates (+ optional valid mask)    (contact map [L, L] bool, valid [L] bool)
lookup              a CATH code (``1.10.8.10``)                      the string
==================  ===============================================  ==========================================
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ankh_jax.data.splits import is_validation
from ankh_jax.data.tokenizer import InvalidSequenceError, clean_sequence
from ankh_jax.downstream import datasets
from ankh_jax.downstream.datasets import DataError
from ankh_jax.downstream.metrics import IGNORE, contact_map
from ankh_jax.errors import InputError

KINDS = ("sequence_class", "sequence_binary", "sequence_regression", "sequence_multilabel", "residue_class",
         "contact", "lookup")
POOLED_KINDS = ("sequence_class", "sequence_binary", "sequence_regression", "sequence_multilabel")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    metric: str                       # accuracy | spearman | micro_f1 | contact_precision | lookup_accuracy
    data_dir: str
    train: str | None                 # split sources relative to data_dir (CSV file or save_to_disk dir)
    valid: str | None
    tests: tuple[tuple[str, str], ...]  # ((test set name, source), ...)
    sequence_column: str = "sequence"
    label_column: str = "label"
    mask_column: str | None = None    # residue_class: 0.0 = not scored; contact: per-residue valid mask
    classes: tuple[str, ...] | None = None
    valid_fraction: float = 0.1       # carved from train (hash of the sequence) when there is no valid split
    multilabel_separator: str = ","
    max_length: int | None = None     # training/validation crop (labels too); test proteins are never cropped
    min_contact_separation: int = 6   # contact: pairs closer than this in sequence are not trained on
    contact_threshold: float = 8.0    # Å, Cβ-Cβ

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")

    def source(self, relative: str) -> str:
        return relative if os.path.isabs(relative) or not self.data_dir else os.path.join(self.data_dir, relative)


@dataclasses.dataclass
class Examples:
    sequences: list[str]
    labels: list


@dataclasses.dataclass
class TaskData:
    spec: TaskSpec
    splits: dict[str, Examples]       # "train", "valid", "test/<name>" ...
    classes: tuple[str, ...] | None

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def test_names(self) -> list[str]:
        return [n for n in self.splits if n.startswith("test/")]


def _class_label(value, where: str) -> str:
    text = str(value).strip()
    try:  # 3, 3.0 and "3" are one class
        f = float(text)
    except ValueError:
        return text
    if not np.isfinite(f):  # a missing value (NaN from pandas / arrow), not a class
        raise DataError(f"{where}: {value!r} is not a class label")
    return str(int(f)) if f.is_integer() else text


def _binary(value, where: str) -> int:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    raise DataError(f"{where}: {value!r} is not a binary label (0/1)")


def _read_split(spec: TaskSpec, source: str, classes: list[str] | None, grow_classes: bool, crop: bool = True
                ) -> Examples:
    columns = [spec.sequence_column, spec.label_column] + ([spec.mask_column] if spec.mask_column else [])
    data = datasets.read_columns(source, columns)
    sequences, labels = [], []
    for row, raw_seq in enumerate(data[spec.sequence_column], start=1):
        where = f"{source}: row {row}, column"
        try:
            seq = clean_sequence(str(raw_seq), record=f"row {row}", source=source)
        except InvalidSequenceError as err:
            raise DataError(str(err)) from None
        value = data[spec.label_column][row - 1]
        mask = data[spec.mask_column][row - 1] if spec.mask_column else None
        label = _encode(spec, seq, value, mask, classes, grow_classes, f"{where} {spec.label_column!r}",
                        source, row)
        if crop and spec.max_length and len(seq) > spec.max_length:
            seq, label = _crop(spec, seq, label)
        sequences.append(seq)
        labels.append(label)
    if not sequences:
        raise DataError(f"{source}: no rows")
    return Examples(sequences, labels)


def _crop(spec: TaskSpec, seq: str, label):
    n = spec.max_length
    if spec.kind == "residue_class":
        label = label[:n]
    elif spec.kind == "contact":
        label = (label[0][:n, :n], label[1][:n])
    return seq[:n], label


def _encode(spec, seq, value, mask, classes, grow, where, source, row):
    kind = spec.kind
    if kind == "sequence_class":
        name = _class_label(value, where)
        if name not in classes:
            if not grow:
                raise DataError(f"{where}: class {name!r} does not occur in training (classes: {classes[:20]})")
            classes.append(name)
        return classes.index(name)
    if kind == "sequence_binary":
        return _binary(value, where)
    if kind == "sequence_regression":
        return datasets.parse_float(value, source=source, row=row, column=spec.label_column)
    if kind == "sequence_multilabel":
        names = [_class_label(v, where) for v in str(value).split(spec.multilabel_separator) if v.strip()]
        hot = np.zeros(len(classes) if not grow else 0, np.float32)
        for name in names:
            if name not in classes:
                if not grow:
                    raise DataError(f"{where}: label {name!r} does not occur in training")
                classes.append(name)
        return tuple(classes.index(n) for n in names) if grow else _multi_hot(names, classes, hot)
    if kind == "residue_class":
        letters = "".join(str(value).split())
        if len(letters) != len(seq):
            raise DataError(f"{where}: {len(letters)} labels for a sequence of {len(seq)} residues")
        ids = np.empty(len(seq), np.int32)
        for pos, letter in enumerate(letters):
            if letter not in classes:
                if not grow:
                    raise DataError(f"{where}: label {letter!r} at position {pos + 1} is not one of {classes}")
                classes.append(letter)
            ids[pos] = classes.index(letter)
        if mask is not None:
            scored = datasets.parse_float_list(mask, source=source, row=row, column=spec.mask_column)
            if scored.size != len(seq):
                raise DataError(f"{source}: row {row}, column {spec.mask_column!r}: {scored.size} values for "
                                f"{len(seq)} residues")
            ids[scored == 0] = IGNORE
        return ids
    if kind == "contact":
        coords = datasets.parse_coordinates(value, source=source, row=row, column=spec.label_column,
                                            length=len(seq))
        valid = np.isfinite(coords).all(axis=1)
        if mask is not None:
            given = datasets.parse_float_list(mask, source=source, row=row, column=spec.mask_column)
            if given.size != len(seq):
                raise DataError(f"{source}: row {row}, column {spec.mask_column!r}: {given.size} values for "
                                f"{len(seq)} residues")
            valid &= given != 0
        return contact_map(np.nan_to_num(coords), threshold=spec.contact_threshold), valid
    return str(value).strip()  # lookup


def _multi_hot(names, classes, hot):
    for n in names:
        hot[classes.index(n)] = 1.0
    return hot


def load_task(spec: TaskSpec) -> TaskData:
    """Reads every split of ``spec``; class vocabularies come from training (or ``spec.classes``).

    ``spec.max_length`` crops training and validation sequences only: test sets are evaluated whole (contact
    precision at L/k over a protein cropped to 512 residues is not the standard long-range P@L)."""
    classes = list(spec.classes) if spec.classes is not None else []
    grow = spec.classes is None and spec.kind in ("sequence_class", "sequence_multilabel", "residue_class")
    splits: dict[str, Examples] = {}
    if spec.train:
        train = _read_split(spec, spec.source(spec.train), classes, grow)
        if spec.kind == "sequence_multilabel" and grow:
            train.labels = [_multi_hot([classes[i] for i in ids], classes, np.zeros(len(classes), np.float32))
                            for ids in train.labels]
        if spec.valid:
            splits["train"] = train
            splits["valid"] = _read_split(spec, spec.source(spec.valid), classes, False)
        elif spec.valid_fraction > 0:
            is_valid = [is_validation(s, spec.valid_fraction) for s in train.sequences]
            def pick(flag: bool) -> Examples:
                return Examples([s for s, v in zip(train.sequences, is_valid) if v == flag],
                                [y for y, v in zip(train.labels, is_valid) if v == flag])
            splits["train"], splits["valid"] = pick(False), pick(True)
            if not splits["valid"].sequences:
                raise DataError(f"task {spec.name}: valid_fraction={spec.valid_fraction} left no validation rows")
        else:
            splits["train"] = train
    for name, source in spec.tests:  # whole: a metric over cropped test proteins is not the benchmark's metric
        splits[f"test/{name}"] = _read_split(spec, spec.source(source), classes, False, crop=False)
    uses_classes = spec.kind in ("sequence_class", "sequence_multilabel", "residue_class")
    return TaskData(spec, splits, tuple(classes) if uses_classes else None)
