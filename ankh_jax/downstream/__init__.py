"""Downstream Ankh: ConvBERT task heads (the ``ankh`` package's, in Flax), LoRA, the fine-tuning runner, metrics.

The heads are re-exported here and (lazily) at the top level, so ``ankh_jax.ConvBertForBinaryClassification``
works as ``ankh.ConvBertForBinaryClassification`` does. The runner is ``python -m ankh_jax.finetune``.
"""

from ankh_jax.downstream.convbert import ConvBertLayer, ConvBertStack, MixedAttention, params_from_torch
from ankh_jax.downstream.heads import (
    ConvBertForBinaryClassification,
    ConvBertForContactPrediction,
    ConvBertForMultiClassClassification,
    ConvBertForMultiLabelClassification,
    ConvBertForRegression,
)

__all__ = [
    "ConvBertForBinaryClassification",
    "ConvBertForContactPrediction",
    "ConvBertForMultiClassClassification",
    "ConvBertForMultiLabelClassification",
    "ConvBertForRegression",
    "ConvBertLayer",
    "ConvBertStack",
    "MixedAttention",
    "params_from_torch",
]
