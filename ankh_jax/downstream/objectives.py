"""Per label kind: which head, which loss, and how logits become the task's metric.

Losses follow ``ankh``: BCE with logits (binary, multi-label), cross-entropy with -100 ignored (classes per
sequence or residue, contacts), MSE (regression). Padding rows (``weights`` 0) and ignored labels never count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ankh_jax.downstream import heads, metrics
from ankh_jax.downstream.task_spec import TaskData


def build_head(data: TaskData, input_dim: int, *, nhead: int, hidden_dim: int, num_layers: int, kernel_size: int,
               dropout: float, pooling: str, training_labels_mean: float | None = None):
    kind = data.spec.kind
    common = {"input_dim": input_dim, "nhead": nhead, "hidden_dim": hidden_dim, "num_layers": num_layers,
              "kernel_size": kernel_size, "dropout": dropout}
    if kind == "sequence_binary":
        return heads.ConvBertForBinaryClassification(**common, pooling=pooling)
    if kind == "sequence_regression":
        return heads.ConvBertForRegression(**common, pooling=pooling, training_labels_mean=training_labels_mean)
    if kind == "sequence_class":
        return heads.ConvBertForMultiClassClassification(num_tokens=data.num_classes, **common, pooling=pooling)
    if kind == "sequence_multilabel":
        return heads.ConvBertForMultiLabelClassification(num_tokens=data.num_classes, **common, pooling=pooling)
    if kind == "residue_class":
        return heads.ConvBertForMultiClassClassification(num_tokens=data.num_classes, **common, pooling=None)
    if kind == "contact":
        return heads.ConvBertForContactPrediction(**common)
    raise ValueError(f"task {data.spec.name}: label kind {kind!r} trains no head")


def _masked_mean(values, weights):
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def loss_fn(kind: str, logits, batch) -> jax.Array:
    labels, w = batch["labels"], batch["weights"]
    if kind == "sequence_binary":
        return _masked_mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], labels), w)
    if kind == "sequence_regression":
        return _masked_mean((logits[:, 0] - labels) ** 2, w)
    if kind == "sequence_multilabel":
        per_row = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
        return _masked_mean(per_row, w)
    # integer classes: per sequence [B], per residue [B, T], contacts [B, T, T]
    valid = labels != metrics.IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return _masked_mean(ce, valid.astype(ce.dtype))


def outputs_per_example(kind: str, logits: np.ndarray, batch: dict, count: int) -> list:
    """What the metric needs from each real row of a batch (numpy)."""
    out = []
    for r in range(count):
        n = int(batch["mask"][r].sum())
        if kind in ("sequence_binary", "sequence_regression"):
            out.append(float(logits[r, 0]))
        elif kind in ("sequence_class", "sequence_multilabel"):
            out.append(np.asarray(logits[r]))
        elif kind == "residue_class":
            out.append(np.asarray(logits[r, :n].argmax(-1)))
        elif kind == "contact":
            lg = logits[r, :n, :n]
            out.append(np.asarray(jax.nn.softmax(lg, axis=-1)[..., 1]))
    return out


def score(kind: str, metric: str, outputs: list, labels: list) -> dict[str, float]:
    """{metric name: value}; the first entry is the one early stopping watches (higher is better)."""
    if metric == "accuracy":
        if kind == "sequence_binary":
            pred = np.array([o > 0 for o in outputs], np.int32)
            return {"accuracy": metrics.accuracy(pred, np.asarray(labels))}
        if kind == "sequence_class":
            return {"accuracy": metrics.accuracy(np.array([o.argmax() for o in outputs]), np.asarray(labels))}
        if kind == "residue_class":
            return {"accuracy": metrics.accuracy(np.concatenate(outputs), np.concatenate(labels))}
    if metric == "spearman" and kind == "sequence_regression":
        return {"spearman": metrics.spearman(np.asarray(outputs), np.asarray(labels))}
    if metric == "micro_f1" and kind == "sequence_multilabel":
        return {"micro_f1": metrics.micro_f1(np.stack(outputs) > 0, np.stack(labels))}
    if metric == "contact_precision" and kind == "contact":
        result = metrics.contact_precision(outputs, [c for c, _ in labels], [v for _, v in labels])
        return {"precision_L/5": result["L/5"], "precision_L/1": result["L/1"]}
    raise ValueError(f"metric {metric!r} is not defined for label kind {kind!r}")
