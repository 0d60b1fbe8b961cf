"""Incremental decoding against the full decoder and against transformers' ``generate`` (the reference).

* cached step-by-step logits equal one uncached decoder pass within 1e-5 of max |logit|, unrolled and scanned;
* greedy and beam search (with ``min_new_tokens`` and a length penalty) are token-identical to
  ``T5ForConditionalGeneration.generate`` on the exported weights, with rows that end at different lengths;
* sampling repeats with the seed, changes with it, and with ``top_k=1`` is greedy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.inference import decoding
from ankh_jax.model import Transformer
from ankh_jax.testing import DECODING_CFG as CFG
from ankh_jax.testing import DECODING_SEQS as SEQS
from ankh_jax.testing import apply_jitted

torch = pytest.importorskip("torch")


def _batch():
    return AnkhTokenizer().batch_encode(SEQS)


def _hf_generate(hf_model, max_new_tokens, **kw):
    ids, mask = _batch()
    with torch.no_grad():
        out = hf_model.generate(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                max_new_tokens=max_new_tokens, do_sample=False, **kw).numpy()[:, 1:]
    out = np.pad(out, ((0, 0), (0, max_new_tokens - out.shape[1])))
    after_eos = np.cumsum(np.cumsum(out == 1, axis=1), axis=1) > 1  # beam search fills with </s>, we with 0
    return np.where(after_eos, 0, out)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_steps_equal_the_full_decoder(params, scan_layers):
    cfg = CFG.replace(scan_layers=scan_layers)
    p = decoding.prepare_params(cfg, params)
    enc = jnp.asarray(decoding.pad_to_bucket(_batch()[0]))
    rng = np.random.default_rng(0)
    dec = rng.integers(3, 144, (enc.shape[0], 16)).astype(np.int32)  # longer than the max distance 12
    dec[:, 0] = 0
    full = np.asarray(apply_jitted(Transformer(cfg), {"params": p}, enc, jnp.asarray(dec)))
    encoded = decoding.encode(cfg, p, enc)
    cache = decoding.init_cache(cfg, p, encoded, enc, 20)  # longer than used: unused slots stay masked
    step = jax.jit(functools.partial(decoding.decode_step, cfg))
    steps = []
    for t in range(dec.shape[1]):
        logits, cache = step(p, cache, jnp.asarray(dec[:, t:t + 1]), encoded if t == 0 else None, enc)
        steps.append(np.asarray(logits[:, 0]))
    err = np.abs(np.stack(steps, axis=1) - full).max() / np.abs(full).max()
    assert err < 1e-5, err


def test_greedy_is_token_identical_to_transformers(params, hf_model):
    ours = decoding.generate(CFG, params, _batch()[0], max_new_tokens=12)
    ref = _hf_generate(hf_model, 12)
    np.testing.assert_array_equal(ours, ref)
    ends = [(row == 1).argmax() if (row == 1).any() else -1 for row in ref]
    assert len(set(ends)) > 1, "the rows should end at different lengths"
    ours = decoding.generate(CFG.replace(scan_layers=True), params, _batch()[0], max_new_tokens=12,
                             min_new_tokens=5)
    np.testing.assert_array_equal(ours, _hf_generate(hf_model, 12, min_new_tokens=5))


@pytest.mark.parametrize("num_beams,length_penalty,min_new", [(3, 1.0, 0), (4, 0.5, 3)])
def test_beam_search_is_token_identical_to_transformers(params, hf_model, num_beams, length_penalty, min_new):
    ours = decoding.generate(CFG, params, _batch()[0], max_new_tokens=10, strategy="beam", num_beams=num_beams,
                             length_penalty=length_penalty, min_new_tokens=min_new)
    ref = _hf_generate(hf_model, 10, num_beams=num_beams, length_penalty=length_penalty, min_new_tokens=min_new)
    np.testing.assert_array_equal(ours, ref)
    assert not np.array_equal(ours, decoding.generate(CFG, params, _batch()[0], max_new_tokens=10,
                                                      min_new_tokens=min_new)), "beam should differ from greedy"


def test_sampling_repeats_with_its_seed(params):
    ids = _batch()[0]
    kw = {"max_new_tokens": 10, "strategy": "sample", "temperature": 1.5, "top_p": 0.95}
    a = decoding.generate(CFG, params, ids, seed=1, **kw)
    np.testing.assert_array_equal(a, decoding.generate(CFG, params, ids, seed=1, **kw))
    assert not np.array_equal(a, decoding.generate(CFG, params, ids, seed=2, **kw))
    np.testing.assert_array_equal(decoding.generate(CFG, params, ids, max_new_tokens=10, strategy="sample",
                                                    top_k=1, seed=3),
                                  decoding.generate(CFG, params, ids, max_new_tokens=10))


def test_sample_warp_keeps_top_k_and_nucleus():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(decoding._sample_warp(logits, 1.0, 0, 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])  # 0.5 < 0.7 <= 0.8
    kept = np.isfinite(np.asarray(decoding._sample_warp(logits, 1.0, 3, 1.0)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_bad_settings_fail_before_compute(params):
    ids = _batch()[0]
    for kw, msg in [({"strategy": "nucleus"}, "strategy"), ({"strategy": "beam", "num_beams": 1}, "num_beams"),
                    ({"temperature": 0.0}, "temperature"), ({"top_p": 1.5}, "top_p"),
                    ({"max_new_tokens": 0}, "max_new_tokens")]:
        with pytest.raises(ValueError, match=msg):
            decoding.generate(CFG, params, ids, **kw)
    with pytest.raises(ValueError, match="no decoder"):
        decoding.generate(CFG, {k: params[k] for k in ("token_embedder", "encoder")}, ids)


def test_generation_on_a_mesh_with_sharded_params_is_unchanged(params):
    """Params sharded by the logical axis rules (data 2 x model 2 of the fake devices), the model's constraints
    active: the same tokens as on one device."""
    import jax

    from ankh_jax.training.partitioning import Partitioner
    from ankh_jax.training.steps import abstract_boxed_params

    partitioner = Partitioner(mesh_shape=(2, 1, 2), devices=jax.devices()[:4])
    specs = partitioner.param_specs(abstract_boxed_params(Transformer(CFG), partitioner))
    sharded = jax.tree_util.tree_map(lambda x, s: jax.device_put(x, partitioner.sharding(s)),
                                     decoding.prepare_params(CFG, params), specs)
    ids = np.concatenate([_batch()[0], _batch()[0][:1]])  # 4 rows: divisible by the data axis
    with partitioner.activate():
        ours = decoding.generate(CFG, sharded, ids, max_new_tokens=7, strategy="beam", num_beams=2, prepared=True)
    np.testing.assert_array_equal(ours, decoding.generate(CFG, params, ids, max_new_tokens=7, strategy="beam",
                                                          num_beams=2))
