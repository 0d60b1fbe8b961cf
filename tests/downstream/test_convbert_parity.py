"""The Flax ConvBERT heads against ``transformers`` ConvBertLayer stacks built as the ``ankh`` package builds them,
and against the ``ankh`` 1.10 package's own heads where ``ankh`` can be imported.

Reference: PyTorch in float64 (random weights everywhere, LayerNorm and biases included), converted with
``params_from_torch``; tolerance 1e-5 absolute on unpadded inputs, for every head type.
"""

import numpy as np
import pytest
import torch
from transformers.models.convbert import ConvBertConfig, ConvBertLayer

import ankh_jax.downstream as ds
from ankh_jax.testing import apply_jitted

torch.manual_seed(0)
INPUT_DIM, NHEAD, HIDDEN, KERNEL = 32, 4, 16, 7


class TorchAnkhHead(torch.nn.Module):
    """The structure of ``ankh``'s heads: ``transformer_encoder`` (ConvBertLayer list), pooling, ``decoder``."""

    def __init__(self, n_out, num_layers, pooling, nhead=NHEAD, kernel=KERNEL):
        super().__init__()
        cfg = ConvBertConfig(hidden_size=INPUT_DIM, num_attention_heads=nhead, intermediate_size=HIDDEN,
                             conv_kernel_size=kernel, hidden_dropout_prob=0.2, num_hidden_layers=1)
        self.transformer_encoder = torch.nn.ModuleList([ConvBertLayer(cfg) for _ in range(num_layers)])
        self.decoder = torch.nn.Linear(INPUT_DIM, n_out)
        self.pooling = pooling

    def forward(self, x):
        for layer in self.transformer_encoder:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out  # transformers 5 returns a tensor
        if self.pooling == "max":
            x = x.max(dim=1).values
        elif self.pooling in ("mean", "avg"):
            x = x.mean(dim=1)
        return self.decoder(x)


class TorchContactHead(torch.nn.Module):
    """``ankh``'s ConvBERTForContactPrediction: ConvBertModel encoder, then pairwise prod/diff features."""

    def __init__(self, num_layers):
        super().__init__()
        cfg = ConvBertConfig(hidden_size=INPUT_DIM, num_attention_heads=NHEAD, intermediate_size=HIDDEN,
                             conv_kernel_size=KERNEL, hidden_dropout_prob=0.1, num_hidden_layers=num_layers)
        from transformers.models.convbert import ConvBertModel
        self.encoder = torch.nn.Module()
        self.encoder.encoder = ConvBertModel(cfg).encoder
        self.decoder = torch.nn.Module()
        self.decoder.decoder = torch.nn.Linear(2 * INPUT_DIM, 2)

    def forward(self, x):
        for layer in self.encoder.encoder.layer:
            out = layer(x)
            x = out[0] if isinstance(out, tuple) else out
        prod = x[:, :, None, :] * x[:, None, :, :]
        diff = x[:, :, None, :] - x[:, None, :, :]
        logits = self.decoder.decoder(torch.cat((prod, diff), -1))
        return (logits + logits.transpose(1, 2)) / 2


def randomise(module):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module.double().eval()


def compare(torch_head, flax_head, x):
    state = {k: v for k, v in torch_head.state_dict().items()}
    params = ds.params_from_torch(state, flax_head)
    with torch.no_grad():
        expected = torch_head(torch.from_numpy(x.astype(np.float64))).numpy()
    got = np.asarray(apply_jitted(flax_head, {"params": params}, x.astype(np.float32)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    return got


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_binary_head_matches_ankh(pooling):
    x = np.random.default_rng(0).normal(size=(3, 11, INPUT_DIM))
    flax_head = ds.ConvBertForBinaryClassification(input_dim=INPUT_DIM, nhead=NHEAD, hidden_dim=HIDDEN,
                                                   num_hidden_layers=1, num_layers=2, kernel_size=KERNEL,
                                                   dropout=0.2, pooling=pooling)
    got = compare(randomise(TorchAnkhHead(1, 2, pooling)), flax_head, x)
    assert got.shape == (3, 1)


def test_multiclass_per_residue_matches_ankh():
    x = np.random.default_rng(1).normal(size=(2, 13, INPUT_DIM))
    flax_head = ds.ConvBertForMultiClassClassification(num_tokens=8, input_dim=INPUT_DIM, nhead=NHEAD,
                                                       hidden_dim=HIDDEN, num_layers=1, kernel_size=KERNEL)
    assert compare(randomise(TorchAnkhHead(8, 1, None)), flax_head, x).shape == (2, 13, 8)


def test_multiclass_pooled_matches_ankh():
    x = np.random.default_rng(2).normal(size=(2, 9, INPUT_DIM))
    flax_head = ds.ConvBertForMultiClassClassification(num_tokens=10, input_dim=INPUT_DIM, nhead=NHEAD,
                                                       hidden_dim=HIDDEN, num_layers=1, kernel_size=KERNEL,
                                                       pooling="max")
    assert compare(randomise(TorchAnkhHead(10, 1, "max")), flax_head, x).shape == (2, 10)


def test_multilabel_matches_ankh():
    x = np.random.default_rng(3).normal(size=(2, 10, INPUT_DIM))
    flax_head = ds.ConvBertForMultiLabelClassification(num_tokens=5, input_dim=INPUT_DIM, nhead=NHEAD,
                                                       hidden_dim=HIDDEN, num_layers=1, kernel_size=KERNEL)
    assert compare(randomise(TorchAnkhHead(5, 1, None)), flax_head, x).shape == (2, 10, 5)


def test_regression_matches_ankh_and_bias_starts_at_label_mean():
    x = np.random.default_rng(4).normal(size=(2, 12, INPUT_DIM))
    flax_head = ds.ConvBertForRegression(input_dim=INPUT_DIM, nhead=NHEAD, hidden_dim=HIDDEN, num_hidden_layers=1,
                                         num_layers=1, kernel_size=KERNEL, dropout=0.0, pooling="max",
                                         training_labels_mean=0.38145)
    compare(randomise(TorchAnkhHead(1, 1, "max")), flax_head, x)
    import jax
    fresh = jax.jit(flax_head.init)(jax.random.key(0), x.astype(np.float32))["params"]
    assert float(fresh["decoder"]["bias"][0]) == pytest.approx(0.38145)
    kernel = np.asarray(fresh["decoder"]["kernel"])
    assert np.abs(kernel).max() <= 0.1 and np.abs(kernel).max() > 0.05  # U(-0.1, 0.1)


def test_contact_head_matches_ankh():
    x = np.random.default_rng(5).normal(size=(2, 10, INPUT_DIM))
    flax_head = ds.ConvBertForContactPrediction(input_dim=INPUT_DIM, nhead=NHEAD, hidden_dim=HIDDEN,
                                                num_layers=1, kernel_size=KERNEL)
    got = compare(randomise(TorchContactHead(1)), flax_head, x)
    assert got.shape == (2, 10, 10, 2)


def test_single_attention_head_config_matches():
    """nhead=2 -> one attention head + one convolution head (ConvBert's head_ratio corner case)."""
    x = np.random.default_rng(6).normal(size=(1, 8, INPUT_DIM))
    flax_head = ds.ConvBertForRegression(input_dim=INPUT_DIM, nhead=2, hidden_dim=HIDDEN, kernel_size=3,
                                         pooling="mean")
    compare(randomise(TorchAnkhHead(1, 1, "mean", nhead=2, kernel=3)), flax_head, x)


def test_params_from_torch_names_missing_and_misshaped_keys():
    flax_head = ds.ConvBertForBinaryClassification(input_dim=INPUT_DIM, nhead=NHEAD, hidden_dim=HIDDEN)
    state = dict(TorchAnkhHead(1, 1, "max").state_dict())
    del state["transformer_encoder.0.attention.self.query.weight"]
    state["decoder.weight"] = torch.zeros(1, INPUT_DIM + 1)
    with pytest.raises(ValueError) as err:
        ds.params_from_torch(state, flax_head)
    assert "transformer_encoder.0.attention.self.query.weight" in str(err.value)
    assert "'decoder.weight' has shape (1, 33)" in str(err.value)
    state = dict(TorchAnkhHead(1, 2, "max").state_dict())
    with pytest.raises(ValueError, match="unexpected keys.*transformer_encoder.1"):
        ds.params_from_torch(state, flax_head)


# ------------------------------------------------------------------------------------ the real ankh 1.10 heads
# The heads of the `ankh` package itself as the reference, where it can be imported. It needs transformers < 5
# (ankh 1.10 imports TFT5EncoderModel) and is installed without its pinned dependencies:
#   pip install --no-deps ankh==1.10.0 'transformers>=4.40,<5'
# (with TensorFlow + Keras 3 installed too, run pytest with USE_TF=0). Otherwise these tests skip, saying why.

def _ankh():
    try:
        import ankh
    except Exception as err:  # noqa: BLE001 - ImportError, or transformers 4 refusing Keras 3 (a ValueError)
        pytest.skip(f"the ankh package is not importable here ({type(err).__name__}: {str(err)[:160]}); see the "
                    "comment above for how to enable these tests")
    return ankh


def compare_with_ankh(ankh_head, flax_head, x):
    ankh_head = randomise(ankh_head)
    params = ds.params_from_torch(dict(ankh_head.state_dict()), flax_head)
    with torch.no_grad():
        expected = ankh_head(torch.from_numpy(x.astype(np.float64))).logits.numpy()
    got = np.asarray(apply_jitted(flax_head, {"params": params}, x.astype(np.float32)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    return got


ANKH_CASES = {  # ankh class, constructor arguments beyond the shared ones, output shape for x of [3, 11, d]
    "binary_max": ("ConvBertForBinaryClassification",
                   {"num_hidden_layers": 1, "num_layers": 2, "dropout": 0.2, "pooling": "max"}, (3, 1)),
    "binary_avg": ("ConvBertForBinaryClassification", {"pooling": "avg"}, (3, 1)),
    "multiclass": ("ConvBertForMultiClassClassification", {"num_tokens": 8}, (3, 11, 8)),
    "multilabel": ("ConvBertForMultiLabelClassification", {"num_tokens": 5, "num_layers": 2}, (3, 11, 5)),
    "regression": ("ConvBertForRegression",
                   {"num_hidden_layers": 1, "pooling": "max", "training_labels_mean": 0.38}, (3, 1)),
    "one_attention_head": ("ConvBertForRegression",
                           {"num_hidden_layers": 1, "nhead": 2, "kernel_size": 3, "pooling": "avg"}, (3, 1)),
}


@pytest.mark.parametrize("case", list(ANKH_CASES))
def test_flax_heads_match_the_ankh_package_heads(case):
    ankh = _ankh()
    cls, kwargs, shape = ANKH_CASES[case]
    kwargs = {"input_dim": INPUT_DIM, "nhead": NHEAD, "hidden_dim": HIDDEN, "kernel_size": KERNEL, **kwargs}
    x = np.random.default_rng(7).normal(size=(3, 11, INPUT_DIM))
    got = compare_with_ankh(getattr(ankh, cls)(**kwargs), getattr(ds, cls)(**kwargs), x)
    assert got.shape == shape
