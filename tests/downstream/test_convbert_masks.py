"""Padding never changes a head's output: a sequence alone and inside a padded batch agree (fp32, 1e-5)."""

import jax
import numpy as np
import pytest

import ankh_jax.downstream as ds
from ankh_jax.testing import apply_jitted

D = 32
HEADS = {
    "binary_max": ds.ConvBertForBinaryClassification(input_dim=D, nhead=4, hidden_dim=16, num_layers=2,
                                                     pooling="max"),
    "regression_mean": ds.ConvBertForRegression(input_dim=D, nhead=4, hidden_dim=16, pooling="mean"),
    "multiclass_residue": ds.ConvBertForMultiClassClassification(num_tokens=3, input_dim=D, nhead=4,
                                                                 hidden_dim=16, num_layers=2),
    "multiclass_avg": ds.ConvBertForMultiClassClassification(num_tokens=3, input_dim=D, nhead=4, hidden_dim=16,
                                                             pooling="avg"),
    "multilabel_residue": ds.ConvBertForMultiLabelClassification(num_tokens=4, input_dim=D, nhead=4,
                                                                 hidden_dim=16),
    "contact": ds.ConvBertForContactPrediction(input_dim=D, nhead=4, hidden_dim=16),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_alone_equals_padded(name):
    head = HEADS[name]
    rng = np.random.default_rng(0)
    lengths = [5, 12, 9]
    width = 16
    batch = np.zeros((3, width, D), np.float32)
    mask = np.zeros((3, width), np.int32)
    seqs = []
    for i, n in enumerate(lengths):
        s = rng.normal(size=(n, D)).astype(np.float32)
        seqs.append(s)
        batch[i, :n] = s
        batch[i, n:] = rng.normal(size=(width - n, D))  # garbage in padding must not leak
        mask[i, :n] = 1
    params = jax.jit(head.init)(jax.random.key(1), batch, mask)["params"]
    together = np.asarray(apply_jitted(head, {"params": params}, batch, attention_mask=mask))
    for i, s in enumerate(seqs):
        alone = np.asarray(apply_jitted(head, {"params": params}, s[None]))[0]
        n = lengths[i]
        if head.task_kind == "contact":
            got = together[i, :n, :n]
        elif head.pooling is None:
            got = together[i, :n]
        else:
            got = together[i]
        np.testing.assert_allclose(got, alone, atol=1e-5, rtol=0, err_msg=f"{name} sequence {i}")


def test_dropout_is_active_only_when_not_deterministic():
    head = HEADS["binary_max"]
    x = np.random.default_rng(2).normal(size=(2, 10, D)).astype(np.float32)
    params = jax.jit(head.init)(jax.random.key(0), x)["params"]
    a = apply_jitted(head, {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    b = apply_jitted(head, {"params": params}, x, deterministic=False, rngs={"dropout": jax.random.key(2)})
    c = apply_jitted(head, {"params": params}, x)
    d = apply_jitted(head, {"params": params}, x)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)


def test_bad_pooling_and_kernel_are_rejected():
    x = np.zeros((1, 5, D), np.float32)
    with pytest.raises(ValueError, match="pooling"):
        ds.ConvBertForBinaryClassification(input_dim=D, nhead=4, hidden_dim=8, pooling="sum").init(
            jax.random.key(0), x)
    with pytest.raises(ValueError, match="pooling cannot be None"):
        ds.ConvBertForRegression(input_dim=D, nhead=4, hidden_dim=8, pooling=None).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="odd"):
        ds.ConvBertForBinaryClassification(input_dim=D, nhead=4, hidden_dim=8, kernel_size=4).init(
            jax.random.key(0), x)
