"""The frozen protocol's HDF5 embedding cache: reused across runs, refused for another encoder, exact values."""

import numpy as np
import pytest

from ankh_jax.downstream.embedding_cache import build_cache
from ankh_jax.downstream.encoder_source import load_encoder
from ankh_jax.embed import embed_sequences


def test_cache_reuses_embeddings_and_refuses_another_encoder(tmp_path):
    enc = load_encoder("random:tiny:0")
    seqs = ["MKVLAAGG", "GSHMSLFDFFKNK", "MKVLAAGG"]
    messages = []
    path = str(tmp_path / "embeddings.h5")
    store = build_cache(enc, seqs[:2], path, progress=False, log=messages.append)
    expected = embed_sequences(enc.config, enc.params, seqs[:2])
    for s, e in zip(seqs[:2], expected, strict=True):
        np.testing.assert_array_equal(store[s], e)
        assert store[s].shape == (len(s), enc.d_model)
    store.close()
    messages.clear()
    build_cache(enc, seqs + ["WWWY"], path, progress=False, log=messages.append).close()
    assert messages[0].startswith("embedding 1 sequences") and "2 cached" in messages[0]
    messages.clear()
    build_cache(enc, seqs, path, progress=False, log=messages.append).close()
    assert messages == []                                   # nothing left to embed
    with pytest.raises(ValueError, match="holds embeddings of encoder 'random:tiny:0', not 'random:tiny:1'"):
        build_cache(load_encoder("random:tiny:1"), seqs, path, progress=False)
    assert load_encoder("random:tiny:0:1").config.num_encoder_layers == 1
    with pytest.raises(ValueError, match="random:PRESET"):
        load_encoder("random:tiny:x")


def test_encoder_from_an_hf_directory_matches_the_model_it_was_exported_from(tmp_path):
    from ankh_jax.export_hf import export

    enc = load_encoder("random:tiny:0")
    export(enc.config, enc.params, str(tmp_path / "hf"), encoder_only=True)
    loaded = load_encoder(str(tmp_path / "hf"))
    assert loaded.source == str(tmp_path / "hf") and loaded.config.d_model == enc.config.d_model
    tokens = np.array([[5, 6, 7, 9, 1, 0]], np.int32)
    np.testing.assert_array_equal(loaded.module().apply({"params": loaded.params}, tokens),
                                  enc.module().apply({"params": enc.params}, tokens))
