"""The ``ankh`` package's ConvBERT task heads in Flax, with the same constructor arguments.

Usage ports line for line from ``ankh``::

    head = ankh_jax.ConvBertForBinaryClassification(input_dim=768, nhead=4, hidden_dim=384, num_hidden_layers=1,
                                                    num_layers=1, kernel_size=7, dropout=0.2, pooling='max')
    params = head.init(jax.random.key(0), embeddings, attention_mask)["params"]
    logits = head.apply({"params": params}, embeddings, attention_mask=mask, deterministic=True)

``embeddings`` are per-residue encoder outputs [B, L, input_dim] (``</s>`` dropped), ``attention_mask`` [B, L] with 1
on residues (None: every position is a residue, as in ``ankh``). Pooled heads return [B, n] logits, per-residue heads
[B, L, n]. ``num_hidden_layers`` is accepted and, as in ``ankh``, does nothing: ``num_layers`` sets the depth.
Dropout needs an rng named ``dropout`` when ``deterministic=False``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankh_jax.downstream.convbert import POOLINGS, ConvBertStack, masked_pool
from ankh_jax.errors import InputError


def decoder_init(scale: float = 0.1):
    """``ankh``'s decoder init: U(-0.1, 0.1)."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


def _check_pooling(name: str, pooling, required: bool):
    if pooling is None:
        if required:
            raise InputError(f"{name}: pooling cannot be None; expected one of {POOLINGS}")
        return
    if pooling not in POOLINGS:
        raise InputError(f"{name}: pooling must be one of {POOLINGS} (or None for per-residue output), "
                         f"got {pooling!r}")


def _stack(head, embeddings, attention_mask, deterministic):
    return ConvBertStack(head.input_dim, head.nhead, head.hidden_dim, head.num_layers, head.kernel_size,
                         head.dropout, head.attention_dropout, name="transformer_encoder"
                         )(embeddings, attention_mask, deterministic)


def _decode(head, hidden, attention_mask, features: int, bias_value: float | None = None):
    if head.pooling is not None:
        hidden = masked_pool(hidden, attention_mask, head.pooling)
    bias_init = nn.initializers.zeros if bias_value is None else nn.initializers.constant(bias_value)
    return nn.Dense(features, kernel_init=decoder_init(), bias_init=bias_init, name="decoder")(hidden)


class ConvBertForBinaryClassification(nn.Module):
    """Pooled ConvBERT head with one logit per sequence (loss: BCE with logits)."""

    input_dim: int
    nhead: int
    hidden_dim: int
    num_hidden_layers: int = 1
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.2
    pooling: str = "max"
    attention_dropout: float = 0.1

    task_kind = "binary"

    @nn.compact
    def __call__(self, embeddings, attention_mask=None, deterministic: bool = True):
        _check_pooling(type(self).__name__, self.pooling, required=True)
        hidden = _stack(self, embeddings, attention_mask, deterministic)
        return _decode(self, hidden, attention_mask, 1)


class ConvBertForMultiClassClassification(nn.Module):
    """``num_tokens`` logits per residue (``pooling=None``, as ``ankh``: SSP) or per sequence (``pooling='max'``
    or ``'mean'``: localization, fold). Loss: cross-entropy, labels -100 ignored."""

    num_tokens: int
    input_dim: int
    nhead: int
    hidden_dim: int
    num_hidden_layers: int = 1
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.2
    pooling: str | None = None
    attention_dropout: float = 0.1

    task_kind = "multiclass"

    @nn.compact
    def __call__(self, embeddings, attention_mask=None, deterministic: bool = True):
        _check_pooling(type(self).__name__, self.pooling, required=False)
        hidden = _stack(self, embeddings, attention_mask, deterministic)
        return _decode(self, hidden, attention_mask, self.num_tokens)


class ConvBertForMultiLabelClassification(ConvBertForMultiClassClassification):
    """``num_tokens`` independent logits per residue (``pooling=None``, as ``ankh``) or per sequence.
    Loss: BCE with logits on multi-hot labels. Same layers and arguments as the multiclass head; only the
    loss that ``task_kind`` selects differs."""

    task_kind = "multilabel"


class ConvBertForRegression(nn.Module):
    """Pooled ConvBERT head with one output per sequence (loss: MSE); the output bias starts at
    ``training_labels_mean`` when given (faster convergence, as in ``ankh``)."""

    input_dim: int
    nhead: int
    hidden_dim: int
    num_hidden_layers: int = 1
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.2
    pooling: str = "max"
    training_labels_mean: float | None = None
    attention_dropout: float = 0.1

    task_kind = "regression"

    @nn.compact
    def __call__(self, embeddings, attention_mask=None, deterministic: bool = True):
        _check_pooling(type(self).__name__, self.pooling, required=True)
        hidden = _stack(self, embeddings, attention_mask, deterministic)
        mean = None if self.training_labels_mean is None else float(self.training_labels_mean)
        return _decode(self, hidden, attention_mask, 1, bias_value=mean)


class ConvBertForContactPrediction(nn.Module):
    """ConvBERT layers, then ``ankh``'s pairwise head: Linear([h_i * h_j, h_i - h_j]) -> ``num_tokens`` logits,
    symmetrised. Returns [B, L, L, num_tokens]. The difference term cancels under symmetrisation, so the
    product term is computed directly (no [L, L, 2d] tensor); the parameters keep ``ankh``'s [2d, n] layout."""

    input_dim: int
    nhead: int
    hidden_dim: int
    num_hidden_layers: int = 1
    num_layers: int = 1
    kernel_size: int = 7
    dropout: float = 0.1
    num_tokens: int = 2
    attention_dropout: float = 0.1

    task_kind = "contact"
    pooling = None

    @nn.compact
    def __call__(self, embeddings, attention_mask=None, deterministic: bool = True):
        hidden = _stack(self, embeddings, attention_mask, deterministic)
        d = self.input_dim
        kernel = self.param("decoder_kernel", decoder_init(), (2 * d, self.num_tokens))
        bias = self.param("decoder_bias", nn.initializers.zeros, (self.num_tokens,))
        weighted = jnp.einsum("bic,co->bioc", hidden, kernel[:d])
        logits = jnp.einsum("bioc,bjc->bijo", weighted, hidden) + bias
        # The difference half: (W h_i - W h_j + W h_j - W h_i) / 2 = 0 after symmetrising.
        return logits
