"""Label kinds: what a task's labels are, and everything that follows from it, one :class:`LabelKind` per kind.

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

A record holds, for its kind: ``encode`` (a cell to a label), ``crop``, ``label_array`` (a batch's padded labels),
``head`` (the ``ankh`` ConvBERT head), ``loss``, ``outputs`` (logits to what the metric needs, per example),
``score`` (outputs to the metric) and ``plot`` (outputs to the test-set pictures). A kind that trains no head
(lookup) names the gin run function of its task instead. :func:`get` is the only way from a kind's name (what
``TaskSpec.kind`` and ``run.json`` hold) to its record; nothing else branches on a kind's name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ankh_jax.downstream import datasets, heads, metrics
from ankh_jax.downstream.datasets import DataError
from ankh_jax.errors import InputError
from ankh_jax.parsing import try_float
from ankh_jax.plots import finetune_plots
from ankh_jax.plots.common import note

IGNORE = metrics.IGNORE


@dataclasses.dataclass
class Cell:
    """One row's label cell as read, with what encoding it needs: the task, the (cleaned) sequence, the mask cell,
    the class vocabulary (grown from training when ``grow``) and where it came from (for messages)."""

    spec: Any                 # TaskSpec (label_column, mask_column, multilabel_separator, contact_threshold)
    sequence: str
    value: Any
    mask: Any
    classes: list[str]
    grow: bool
    source: str
    row: int

    @property
    def where(self) -> str:
        return f"{self.source}: row {self.row}, column {self.spec.label_column!r}"

    def class_id(self, name: str, message: str) -> int:
        if name not in self.classes:
            if not self.grow:
                raise DataError(message)
            self.classes.append(name)
        return self.classes.index(name)

    def mask_values(self) -> np.ndarray:
        values = datasets.parse_float_list(self.mask, source=self.source, row=self.row, column=self.spec.mask_column)
        if values.size != len(self.sequence):
            raise DataError(f"{self.source}: row {self.row}, column {self.spec.mask_column!r}: {values.size} values "
                            f"for {len(self.sequence)} residues")
        return values


# ------------------------------------------------------------------------------------------------ encoding
def class_label(value, where: str) -> str:
    text = str(value).strip()
    f = try_float(text)  # 3, 3.0 and "3" are one class
    if f is None:
        return text
    if not np.isfinite(f):  # a missing value (NaN from pandas / arrow), not a class
        raise DataError(f"{where}: {value!r} is not a class label")
    return str(int(f)) if f.is_integer() else text


def _encode_class(cell: Cell) -> int:
    name = class_label(cell.value, cell.where)
    return cell.class_id(name, f"{cell.where}: class {name!r} does not occur in training "
                               f"(classes: {cell.classes[:20]})")


def _encode_binary(cell: Cell) -> int:
    text = str(cell.value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    raise DataError(f"{cell.where}: {cell.value!r} is not a binary label (0/1)")


def _encode_number(cell: Cell) -> float:
    return datasets.parse_float(cell.value, source=cell.source, row=cell.row, column=cell.spec.label_column)


def _encode_class_set(cell: Cell) -> tuple[int, ...]:
    """The class ids of the cell; :func:`_multi_hot` makes them a vector once the vocabulary is complete."""
    names = [class_label(v, cell.where) for v in str(cell.value).split(cell.spec.multilabel_separator) if v.strip()]
    return tuple(cell.class_id(n, f"{cell.where}: label {n!r} does not occur in training") for n in names)


def _multi_hot(labels: list, classes: list[str]) -> list:
    out = []
    for ids in labels:
        hot = np.zeros(len(classes), np.float32)
        hot[list(ids)] = 1.0
        out.append(hot)
    return out


def _encode_residue_classes(cell: Cell) -> np.ndarray:
    letters = "".join(str(cell.value).split())
    if len(letters) != len(cell.sequence):
        raise DataError(f"{cell.where}: {len(letters)} labels for a sequence of {len(cell.sequence)} residues")
    ids = np.empty(len(letters), np.int32)
    for pos, letter in enumerate(letters):
        ids[pos] = cell.class_id(letter, f"{cell.where}: label {letter!r} at position {pos + 1} is not one of "
                                         f"{cell.classes}")
    if cell.mask is not None:
        ids[cell.mask_values() == 0] = IGNORE
    return ids


def _encode_contacts(cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    coords = datasets.parse_coordinates(cell.value, source=cell.source, row=cell.row,
                                        column=cell.spec.label_column, length=len(cell.sequence))
    valid = np.isfinite(coords).all(axis=1)
    if cell.mask is not None:
        valid &= cell.mask_values() != 0
    return metrics.contact_map(np.nan_to_num(coords), threshold=cell.spec.contact_threshold), valid


# ------------------------------------------------------------------------------------------------ batches
def contact_labels(contacts: np.ndarray, valid: np.ndarray, min_separation: int) -> np.ndarray:
    """[L, L] int32: 1 contact, 0 not, -100 for pairs with an invalid residue or |i - j| < min_separation."""
    n = contacts.shape[0]
    out = contacts.astype(np.int32)
    idx = np.arange(n)
    bad = (np.abs(idx[:, None] - idx[None, :]) < min_separation) | ~valid[:, None] | ~valid[None, :]
    out[bad] = IGNORE
    return out


def _class_ids(labels, rows, length, num_classes, min_separation):
    out = np.full(rows, IGNORE, np.int32)
    out[:len(labels)] = labels
    return out


def _numbers(labels, rows, length, num_classes, min_separation):
    out = np.zeros(rows, np.float32)
    out[:len(labels)] = labels
    return out


def _vectors(labels, rows, length, num_classes, min_separation):
    out = np.zeros((rows, num_classes), np.float32)
    if labels:
        out[:len(labels)] = np.stack(labels)
    return out


def _per_residue(labels, rows, length, num_classes, min_separation):
    out = np.full((rows, length), IGNORE, np.int32)
    for i, y in enumerate(labels):
        out[i, :len(y)] = y
    return out


def _pairs(labels, rows, length, num_classes, min_separation):
    out = np.full((rows, length, length), IGNORE, np.int32)
    for i, (contacts, valid) in enumerate(labels):
        n = len(valid)
        out[i, :n, :n] = contact_labels(contacts, valid, min_separation)
    return out


# ------------------------------------------------------------------------------------------------ losses
def _masked_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _binary_loss(logits, batch):
    return _masked_mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], batch["labels"]), batch["weights"])


def _squared_error(logits, batch):
    return _masked_mean((logits[:, 0] - batch["labels"]) ** 2, batch["weights"])


def _multilabel_loss(logits, batch):
    per_row = optax.sigmoid_binary_cross_entropy(logits, batch["labels"]).mean(axis=-1)
    return _masked_mean(per_row, batch["weights"])


def _cross_entropy(logits, batch):
    """Integer classes per sequence [B], per residue [B, T] or per pair [B, T, T]; -100 ignored."""
    labels = batch["labels"]
    valid = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return _masked_mean(ce, valid.astype(ce.dtype))


# ------------------------------------------------------------------------------------------------ outputs
def _first_logit(logits, lengths):
    return [float(logits[r, 0]) for r in range(len(lengths))]


def _logit_vector(logits, lengths):
    return [np.asarray(logits[r]) for r in range(len(lengths))]


def _residue_argmax(logits, lengths):
    return [np.asarray(logits[r, :n].argmax(-1)) for r, n in enumerate(lengths)]


def _contact_probability(logits, lengths):
    return [np.asarray(jax.nn.softmax(logits[r, :n, :n], axis=-1)[..., 1]) for r, n in enumerate(lengths)]


# ------------------------------------------------------------------------------------------------ scores
def predicted_classes(kind: LabelKind, outputs: list, labels: list) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted, true)`` class ids, one per sequence or residue (-100: not scored)."""
    return kind.classes_of(outputs), kind.true_classes(labels)


def _accuracy(kind: LabelKind, outputs, labels):
    return {"accuracy": metrics.accuracy(*predicted_classes(kind, outputs, labels))}


def _spearman(kind: LabelKind, outputs, labels):
    return {"spearman": metrics.spearman(np.asarray(outputs), np.asarray(labels))}


def _micro_f1(kind: LabelKind, outputs, labels):
    return {"micro_f1": metrics.micro_f1(np.stack(outputs) > 0, np.stack(labels))}


def _contact_precision(kind: LabelKind, outputs, labels):
    result = metrics.contact_precision(outputs, [c for c, _ in labels], [v for _, v in labels])
    return {"precision_L/5": result["L/5"], "precision_L/1": result["L/1"]}


# ------------------------------------------------------------------------------------------------ plots
def _plot_confusion(kind: LabelKind, model_dir: str, data, predictions: dict[str, list]) -> list[str]:
    names = ["0", "1"] if data.classes is None else [str(c) for c in data.classes]
    predictions = finetune_plots.first_test_sets(data.spec.name, predictions)
    panels = {test: predicted_classes(kind, outputs, data.splits[f"test/{test}"].labels)
              for test, outputs in predictions.items()}
    score = f"Q{len(names)}" if kind.per_residue and len(names) in (3, 8) else "accuracy"
    return [finetune_plots.plot_confusion_matrices(model_dir, data.spec.name, panels, names, score)]


def _plot_regression(kind: LabelKind, model_dir: str, data, predictions: dict[str, list]) -> list[str]:
    panels = {}
    for test, outputs in finetune_plots.first_test_sets(data.spec.name, predictions).items():
        true, predicted = np.asarray(data.splits[f"test/{test}"].labels, np.float64), np.asarray(outputs, np.float64)
        rho = metrics.spearman(predicted, true) if len(true) > 1 else float("nan")
        panels[test] = (true, predicted, rho)
    return [finetune_plots.plot_regression(model_dir, panels)]


def _plot_contacts(kind: LabelKind, model_dir: str, data, predictions: dict[str, list]) -> list[str]:
    test, outputs = next(iter(predictions.items()))
    labels = data.splits[f"test/{test}"].labels[:finetune_plots.CONTACT_PROTEINS]
    proteins = [(prob, contacts, valid,
                 metrics.contact_precision([prob], [contacts], [valid], fractions=(5,))["L/5"])
                for prob, (contacts, valid) in zip(outputs, labels)]
    return [finetune_plots.plot_contact_maps(model_dir, test, proteins, data.spec.min_contact_separation)]


# ------------------------------------------------------------------------------------------------ the records
@dataclasses.dataclass(frozen=True)
class LabelKind:
    name: str
    metric: str                       # what ``score`` reports (a task's ``metric`` must name it)
    encode: Callable[[Cell], Any]
    uses_classes: bool = False        # a class vocabulary, grown from training unless the task gives ``classes``
    per_residue: bool = False         # labels per residue: cropped with the sequence; the head does not pool
    crop: Callable[[Any, int], Any] | None = None           # (label, n) -> the first n residues' label
    finish_labels: Callable[[list, list[str]], list] | None = None  # once the vocabulary is complete
    label_array: Callable | None = None  # (labels, rows, T, num_classes, min_separation) -> padded batch labels
    head: Callable | None = None      # (num_classes, settings, pooling, training labels) -> flax head
    loss: Callable | None = None      # (logits, batch) -> scalar
    outputs: Callable | None = None   # (logits, residue counts) -> per-example outputs
    score: Callable | None = None     # (kind, outputs, labels) -> {metric: value}; the first is watched
    plot: Callable | None = None      # (kind, model_dir, data, {test: outputs}) -> paths of PNGs written
    classes_of: Callable[[list], np.ndarray] | None = None   # outputs -> predicted class ids
    true_classes: Callable[[list], np.ndarray] | None = None  # labels -> true class ids (-100 not scored)
    run_without_head: tuple[str, str] | None = None  # (tasks module, gin run function) of a kind that trains none
    attention_run: tuple[str, str] | None = None     # the same for ``run.mode='attention'``

    @property
    def trains_head(self) -> bool:
        return self.head is not None

    def score_outputs(self, outputs: list, labels: list) -> dict[str, float]:
        """The metric of ``outputs`` (see ``outputs``) against the encoded ``labels``."""
        return self.score(self, outputs, labels)

    def draw_test_plots(self, model_dir: str, data, predictions: dict[str, list]) -> list[str]:
        """The kind's pictures of the test sets' ``{name: outputs}``; the paths written."""
        if not predictions:
            note(f"task {data.spec.name}: no test set; no test-set plots")
            return []
        if self.plot is None:
            note(f"task {data.spec.name}: no test-set plot for label kind {self.name}")
            return []
        return self.plot(self, model_dir, data, predictions)


def _pooled_head(cls, with_classes=False, with_mean=False):
    def build(num_classes, settings, pooling, train_labels):
        extra = {"num_tokens": num_classes} if with_classes else {}
        if with_mean:
            extra["training_labels_mean"] = float(np.mean(train_labels))
        return cls(**extra, **settings, pooling=pooling)
    return build


def _per_residue_head(num_classes, settings, pooling, train_labels):
    return heads.ConvBertForMultiClassClassification(num_tokens=num_classes, **settings, pooling=None)


def _contact_head(num_classes, settings, pooling, train_labels):
    return heads.ConvBertForContactPrediction(**settings)


def _as_ids(values) -> np.ndarray:
    return np.asarray(values, np.int64)


KINDS: dict[str, LabelKind] = {k.name: k for k in (
    LabelKind("sequence_class", "accuracy", _encode_class, uses_classes=True, label_array=_class_ids,
              head=_pooled_head(heads.ConvBertForMultiClassClassification, with_classes=True),
              loss=_cross_entropy, outputs=_logit_vector, score=_accuracy, plot=_plot_confusion,
              classes_of=lambda outputs: np.array([int(np.argmax(o)) for o in outputs]), true_classes=_as_ids),
    LabelKind("sequence_binary", "accuracy", _encode_binary, label_array=_numbers,
              head=_pooled_head(heads.ConvBertForBinaryClassification), loss=_binary_loss, outputs=_first_logit,
              score=_accuracy, plot=_plot_confusion,
              classes_of=lambda outputs: np.array([o > 0 for o in outputs], np.int64), true_classes=_as_ids),
    LabelKind("sequence_regression", "spearman", _encode_number, label_array=_numbers,
              head=_pooled_head(heads.ConvBertForRegression, with_mean=True), loss=_squared_error,
              outputs=_first_logit, score=_spearman, plot=_plot_regression),
    LabelKind("sequence_multilabel", "micro_f1", _encode_class_set, uses_classes=True, finish_labels=_multi_hot,
              label_array=_vectors, head=_pooled_head(heads.ConvBertForMultiLabelClassification, with_classes=True),
              loss=_multilabel_loss, outputs=_logit_vector, score=_micro_f1),
    LabelKind("residue_class", "accuracy", _encode_residue_classes, uses_classes=True, per_residue=True,
              crop=lambda label, n: label[:n], label_array=_per_residue, head=_per_residue_head,
              loss=_cross_entropy, outputs=_residue_argmax, score=_accuracy, plot=_plot_confusion,
              classes_of=np.concatenate, true_classes=np.concatenate),
    LabelKind("contact", "contact_precision", _encode_contacts, per_residue=True,
              crop=lambda label, n: (label[0][:n, :n], label[1][:n]), label_array=_pairs, head=_contact_head,
              loss=_cross_entropy, outputs=_contact_probability, score=_contact_precision, plot=_plot_contacts,
              attention_run=("contacts", "run_attention_contacts")),
    LabelKind("lookup", "lookup_accuracy", lambda cell: str(cell.value).strip(),
              run_without_head=("lookup", "run_lookup")),
)}


class UnknownKindError(InputError):
    """A task names a label kind (or a metric for it) that does not exist."""


def get(name: str) -> LabelKind:
    """The record of the label kind ``name``; an :class:`UnknownKindError` naming the kinds there are."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise UnknownKindError(f"label kind {name!r} is not one of {tuple(KINDS)}") from None
