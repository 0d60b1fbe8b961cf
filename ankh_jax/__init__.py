"""ankh_jax: pretrain, fine-tune and use the Ankh protein language model in JAX/Flax.

The public API, loaded lazily so that ``import ankh_jax`` stays cheap (no jax, flax, torch or TensorFlow until a
name that needs them is used)::

    import ankh_jax
    model = ankh_jax.load_model("path/to/model")         # an ankh_jax training dir or a HuggingFace dir
    model = ankh_jax.load_large_model()                  # a local copy of ElnaggarLab/ankh-large
    embeddings = model.embed(["MKALCLLLLPVLG"], pooling="mean")
    head = ankh_jax.ConvBertForBinaryClassification(input_dim=1536, nhead=4, hidden_dim=768, ...)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
# No libtpu / TensorFlow start-up noise on a machine without a TPU (ankh_jax/startup.py: no jax, no TensorFlow).
importlib.import_module("ankh_jax.startup").quiet_startup()

_LAZY = {
    # loading models and embedding
    "load_model": "ankh_jax.api",
    "load_base_model": "ankh_jax.api",
    "load_large_model": "ankh_jax.api",
    "AnkhModel": "ankh_jax.api",
    "embed_sequences": "ankh_jax.inference.embedding",
    # the model itself
    "T5Config": "ankh_jax.model.config",
    "Transformer": "ankh_jax.model.network",
    "EncoderOnly": "ankh_jax.model.network",
    # the tokenizer
    "AnkhTokenizer": "ankh_jax.data.tokenizer",
    "write_hf_tokenizer": "ankh_jax.data.tokenizer",
    # downstream heads (the ankh package's ConvBert heads, in Flax)
    "ConvBertForBinaryClassification": "ankh_jax.downstream.heads",
    "ConvBertForMultiClassClassification": "ankh_jax.downstream.heads",
    "ConvBertForMultiLabelClassification": "ankh_jax.downstream.heads",
    "ConvBertForRegression": "ankh_jax.downstream.heads",
    "ConvBertForContactPrediction": "ankh_jax.downstream.heads",
}

__all__ = [
    "AnkhModel",
    "AnkhTokenizer",
    "ConvBertForBinaryClassification",
    "ConvBertForContactPrediction",
    "ConvBertForMultiClassClassification",
    "ConvBertForMultiLabelClassification",
    "ConvBertForRegression",
    "EncoderOnly",
    "T5Config",
    "Transformer",
    "__version__",
    "embed_sequences",
    "load_base_model",
    "load_large_model",
    "load_model",
    "write_hf_tokenizer",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ankh_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
