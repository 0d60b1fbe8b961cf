"""A tiny random Ankh-shaped encoder-decoder (``ankh_jax.testing.decoding_params``), exported to HuggingFace,
shared by the decoding tests: attention width != d_model, relative positions beyond the max distance, every
parameter perturbed, and the ``</s>`` row of the LM head raised so that generations end at different lengths.
"""

import pytest

from ankh_jax.io import hf_export
from ankh_jax.testing import DECODING_CFG, decoding_params


@pytest.fixture(scope="session")
def params():
    return decoding_params(0, eos_boost=1.0)


@pytest.fixture(scope="session")
def exported(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_export")
    hf_export.export(DECODING_CFG, params, str(out))
    return out


@pytest.fixture(scope="session")
def hf_model(exported):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    return transformers.T5ForConditionalGeneration.from_pretrained(str(exported)).eval()
