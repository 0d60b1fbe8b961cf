"""Parameter counts of Ankh Base and Large, from abstract shapes only (jax.eval_shape: no arrays are allocated).

Ankh Large's released checkpoint has 1,878,705,152 parameters (untied lm_head). Ankh Base, derived by hand:
  embedding + lm_head   2 x 144 x 768                                         =     221,184
  encoder layer         4 x 768 x 768 (q,k,v,o) + 3 x 768 x 3072 (gated MLP)
                        + 2 x 768 (norms)                                     =   9,438,720  (x 48 = 453,058,560)
  decoder layer         8 x 768 x 768 (self + cross) + 3 x 768 x 3072 + 3 x 768 = 11,798,784  (x 24 = 283,170,816)
  relative bias 2 x 12 x 64, final norms 2 x 768                              =       3,072
  total                                                                       = 736,453,632
The encoder-only counts are the "450M" / "1.15B" usually quoted for Ankh.
"""

import jax
import jax.numpy as jnp
import pytest

from ankh_jax.model import EncoderOnly, T5Config, Transformer

ANKH_LARGE = 1_878_705_152
ANKH_BASE = 736_453_632
ANKH_LARGE_ENCODER = 1_151_707_648
ANKH_BASE_ENCODER = 453_170_688


def count(tree) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def abstract_params(config: T5Config, encoder_only: bool = False):
    ids = jnp.ones((1, 4), jnp.int32)
    if encoder_only:
        return jax.eval_shape(lambda: EncoderOnly(config).init(jax.random.PRNGKey(0), ids))["params"]
    return jax.eval_shape(lambda: Transformer(config).init(jax.random.PRNGKey(0), ids, ids))["params"]


@pytest.mark.parametrize("preset, total, encoder", [
    (T5Config.ankh_large, ANKH_LARGE, ANKH_LARGE_ENCODER),
    (T5Config.ankh_base, ANKH_BASE, ANKH_BASE_ENCODER),
])
def test_parameter_counts(preset, total, encoder):
    assert count(abstract_params(preset())) == total
    assert count(abstract_params(preset(scan_layers=True))) == total  # stacked layers hold the same numbers
    assert count(abstract_params(preset(scan_layers=True), encoder_only=True)) == encoder
    assert preset().num_params() == total and preset().num_params(encoder_only=True) == encoder


@pytest.mark.parametrize("preset, total", [(T5Config.ankh_large, ANKH_LARGE), (T5Config.ankh_base, ANKH_BASE)])
def test_transformers_counts_the_same(preset, total):
    """transformers' T5 built on the meta device (no memory), its head untied as in the released Ankh."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from ankh_jax.io.hf_mapping import config_to_hf

    cfg = transformers.T5Config(**{k: v for k, v in config_to_hf(preset()).items() if k != "architectures"})
    with torch.device("meta"):
        model = transformers.T5ForConditionalGeneration(cfg)
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    assert sum(p.numel() for p in model.parameters()) == total


@pytest.mark.parametrize("preset, gin_file", [(T5Config.ankh_base, "models/ankh_base.gin"),
                                              (T5Config.ankh_large, "models/ankh_large.gin"),
                                              (T5Config.tiny, "models/ankh_tiny.gin")])
def test_presets_are_the_model_gin_files(preset, gin_file):
    """The Python presets and a gin run read the same numbers: the model gin files (found as a run finds them)."""
    import gin

    from ankh_jax import flags

    try:
        flags.parse_gin([gin_file], [])
        assert gin.query_parameter("%MODEL_CONFIG").scoped_selector == "T5Config"
        assert T5Config(**gin.get_bindings("T5Config")) == preset()
    finally:
        gin.clear_config()


def test_large_and_tiny_override_only_their_sizes():
    """Ankh Large is Ankh Base with wider layers; both share vocabulary, depth and relative-position buckets."""
    base, large = T5Config.ankh_base().to_dict(), T5Config.ankh_large().to_dict()
    assert {k for k in base if base[k] != large[k]} == {"d_model", "d_ff", "num_heads"}
    assert T5Config.tiny().vocab_size == T5Config.ankh_base().vocab_size == 144
