"""A tiny random Ankh-shaped encoder-decoder, exported to HuggingFace, shared by the decoding tests.

Attention width 2 x 8 = 16 != d_model 32, relative positions beyond the max distance, every parameter perturbed
(norm scales too) so no mapping error can hide, and the ``</s>`` row of the LM head raised so that generations
end at different lengths.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ankh_jax import export_hf
from ankh_jax.model import T5Config, Transformer

CFG = T5Config.tiny(d_model=32, d_ff=48, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=12)
SEQS = ["MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQEVAG", "GSHMSLFDFFKNKG", "WYCHQ"]


def tiny_params(seed: int = 0, eos_boost: float = 0.0) -> dict:
    x = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(Transformer(CFG).init(jax.random.PRNGKey(seed), x, x)["params"])
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + rng.normal(0, 0.2, a.shape).astype(np.float32),
                                    params)
    params["decoder"]["logits_dense"]["kernel"][:, 1] *= 1.0 + eos_boost
    return params


@pytest.fixture(scope="session")
def params():
    return tiny_params(0, eos_boost=1.0)


@pytest.fixture(scope="session")
def exported(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_export")
    export_hf.export(CFG, params, str(out))
    return out


@pytest.fixture(scope="session")
def hf_model(exported):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    return transformers.T5ForConditionalGeneration.from_pretrained(str(exported)).eval()
