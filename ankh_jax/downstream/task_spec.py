"""What a downstream task is: where its files are, which columns hold what, the label kind, head and metric.

Each module in ``tasks/`` returns a :class:`TaskSpec` from a gin-configurable function (``ssp3_task()``,
``deeploc_task()``, ...); :func:`load_task` reads every split into :class:`Examples` with labels encoded for the
head. The label kinds, what their cells hold and how they are encoded: ``ankh_jax.downstream.kinds``.
"""

from __future__ import annotations

import dataclasses
import os

from ankh_jax.data.splits import is_validation
from ankh_jax.data.tokenizer import InvalidSequenceError, clean_sequence
from ankh_jax.downstream import datasets, kinds
from ankh_jax.downstream.datasets import DataError


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
        try:
            kind = kinds.get(self.kind)
        except kinds.UnknownKindError as err:
            raise kinds.UnknownKindError(f"task {self.name}: {err}") from None
        if self.metric != kind.metric:
            raise kinds.UnknownKindError(f"task {self.name}: metric {self.metric!r} is not defined for label kind "
                                         f"{self.kind!r} (its metric: {kind.metric!r})")

    @property
    def label_kind(self) -> kinds.LabelKind:
        return kinds.get(self.kind)

    def source(self, relative: str) -> str:
        return relative if os.path.isabs(relative) or not self.data_dir else os.path.join(self.data_dir, relative)


@dataclasses.dataclass
class Examples:
    sequences: list[str]
    labels: list
    uncropped: list[str] | None = None  # the whole sequences when ``max_length`` cropped some (leakage is counted
                                        # on these)

    def whole_sequences(self) -> list[str]:
        return self.sequences if self.uncropped is None else self.uncropped


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


def _read_split(spec: TaskSpec, source: str, classes: list[str], grow_classes: bool, crop: bool = True
                ) -> Examples:
    kind = spec.label_kind
    columns = [spec.sequence_column, spec.label_column] + ([spec.mask_column] if spec.mask_column else [])
    data = datasets.read_columns(source, columns)
    sequences, labels, whole = [], [], []
    for row, raw_seq in enumerate(data[spec.sequence_column], start=1):
        try:
            seq = clean_sequence(str(raw_seq), record=f"row {row}", source=source)
        except InvalidSequenceError as err:
            raise DataError(str(err)) from None
        mask = data[spec.mask_column][row - 1] if spec.mask_column else None
        label = kind.encode(kinds.Cell(spec, seq, data[spec.label_column][row - 1], mask, classes, grow_classes,
                                       source, row))
        whole.append(seq)
        if crop and spec.max_length and len(seq) > spec.max_length:
            seq, label = seq[:spec.max_length], (kind.crop(label, spec.max_length) if kind.crop else label)
        sequences.append(seq)
        labels.append(label)
    if not sequences:
        raise DataError(f"{source}: no rows")
    return Examples(sequences, labels, None if whole == sequences else whole)


def load_task(spec: TaskSpec) -> TaskData:
    """Reads every split of ``spec``; class vocabularies come from training (or ``spec.classes``).

    ``spec.max_length`` crops training and validation sequences only: test sets are evaluated whole (contact
    precision at L/k over a protein cropped to 512 residues is not the standard long-range P@L)."""
    kind = spec.label_kind
    classes = list(spec.classes) if spec.classes is not None else []
    grow = spec.classes is None and kind.uses_classes
    splits: dict[str, Examples] = {}
    if spec.train:
        train = _read_split(spec, spec.source(spec.train), classes, grow)
        if spec.valid:
            splits["train"] = train
            splits["valid"] = _read_split(spec, spec.source(spec.valid), classes, False)
        elif spec.valid_fraction > 0:
            splits["train"], splits["valid"] = _carve_validation(train, spec.valid_fraction)
            if not splits["valid"].sequences:
                raise DataError(f"task {spec.name}: valid_fraction={spec.valid_fraction} left no validation rows")
        else:
            splits["train"] = train
    for name, source in spec.tests:  # whole: a metric over cropped test proteins is not the benchmark's metric
        splits[f"test/{name}"] = _read_split(spec, spec.source(source), classes, False, crop=False)
    if kind.finish_labels is not None:
        for split in splits.values():
            split.labels = kind.finish_labels(split.labels, classes)
    return TaskData(spec, splits, tuple(classes) if kind.uses_classes else None)


def _carve_validation(train: Examples, fraction: float) -> tuple[Examples, Examples]:
    """(train, valid): a sequence goes to validation when its hash falls below ``fraction`` (so copies of one
    sequence stay on one side)."""
    is_valid = [is_validation(s, fraction) for s in train.sequences]
    whole = train.whole_sequences()

    def pick(flag: bool) -> Examples:
        keep = [i for i, v in enumerate(is_valid) if v == flag]
        sequences = [train.sequences[i] for i in keep]
        uncropped = [whole[i] for i in keep]
        return Examples(sequences, [train.labels[i] for i in keep], None if uncropped == sequences else uncropped)

    return pick(False), pick(True)
