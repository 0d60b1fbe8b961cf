"""The frozen protocol's HDF5 embedding cache: reused across runs, refused for another encoder, exact values."""

import re
import shutil

import numpy as np
import pytest

from ankh_jax.downstream.embedding_cache import build_cache
from ankh_jax.downstream.encoder_source import load_encoder
from ankh_jax.inference.embedding import embed_sequences
from ankh_jax.testing import apply_jitted, random_encoder


def test_cache_reuses_embeddings_and_refuses_another_encoder(tmp_path, random_encoder_dir):
    enc = load_encoder(random_encoder_dir(0))
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
    with pytest.raises(ValueError, match=rf"another model .*encoder '{re.escape(random_encoder_dir(0))}'.* not of "
                                         rf"this run's \(encoder '{re.escape(random_encoder_dir(1))}'"):
        build_cache(load_encoder(random_encoder_dir(1)), seqs, path, progress=False)
    assert load_encoder(random_encoder_dir(0, 1)).config.num_encoder_layers == 1
    with pytest.raises(FileNotFoundError, match="random:tiny:x: no such model directory"):
        load_encoder("random:tiny:x")


def test_encoder_from_an_hf_directory_matches_the_model_it_was_exported_from(tmp_path):
    from ankh_jax.io.hf_export import export

    enc = random_encoder("tiny", 0)
    export(enc.config, enc.params, str(tmp_path / "hf"), encoder_only=True)
    loaded = load_encoder(str(tmp_path / "hf"))
    assert loaded.source == str(tmp_path / "hf") and loaded.config.d_model == enc.config.d_model
    tokens = np.array([[5, 6, 7, 9, 1, 0]], np.int32)
    np.testing.assert_array_equal(apply_jitted(loaded.module(), {"params": loaded.params}, tokens),
                                  apply_jitted(enc.module(), {"params": enc.params}, tokens))


def test_cache_is_keyed_by_weights_and_dtypes_not_by_path(tmp_path):
    """Issue 12 / 11: a cache written in bfloat16, or from a model directory overwritten since, was reused
    silently (it was keyed by the ENCODER string); the same weights under another path are the same model."""
    from ankh_jax.io.hf_export import export

    seqs = ["MKVLAAGG", "GSHMSLFDFFKNK"]
    model = str(tmp_path / "model")
    enc0 = random_encoder("tiny", 0)
    export(enc0.config, enc0.params, model, encoder_only=True)
    path = str(tmp_path / "embeddings.h5")
    build_cache(load_encoder(model), seqs, path, progress=False).close()

    with pytest.raises(ValueError, match="compute float32.*compute bfloat16"):
        build_cache(load_encoder(model), seqs, path, compute_dtype="bfloat16", progress=False)
    with pytest.raises(ValueError, match="stored float32.*stored float16"):
        build_cache(load_encoder(model), seqs, path, storage_dtype="float16", progress=False)

    shutil.copytree(model, tmp_path / "copy")                  # same weights, another path: reused as is
    messages = []
    build_cache(load_encoder(str(tmp_path / "copy")), seqs, path, progress=False, log=messages.append).close()
    assert messages == []

    shutil.rmtree(model)                                       # the directory overwritten with other weights
    enc1 = random_encoder("tiny", 1)
    export(enc1.config, enc1.params, model, encoder_only=True)
    with pytest.raises(ValueError, match="another model"):
        build_cache(load_encoder(model), seqs, path, progress=False)


def test_unreadable_cache_is_moved_aside_and_rebuilt(tmp_path, random_encoder_dir):
    """A kill before HDF5's first flush leaves a file h5py cannot open; the rerun must not crash on it."""
    enc = load_encoder(random_encoder_dir(0))
    path = tmp_path / "embeddings.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)         # an HDF5 signature and nothing else
    messages = []
    store = build_cache(enc, ["MKVLAAGG"], str(path), progress=False, log=messages.append)
    np.testing.assert_array_equal(store["MKVLAAGG"], embed_sequences(enc.config, enc.params, ["MKVLAAGG"])[0])
    store.close()
    assert "unreadable" in messages[0] and (tmp_path / "embeddings.h5.unreadable").exists()


def test_cache_and_embed_outputs_share_one_fingerprint(random_encoder_dir):
    """Issue 22: the cache hashed the encoder's fingerprint string plus settings, embed hashed the weights plus
    settings and config fields: two identities for the same numbers. Now both are model.fingerprint's."""
    from ankh_jax.downstream.embedding_cache import cache_attrs
    from ankh_jax.inference.embedding import output_fingerprint
    from ankh_jax.model.fingerprint import embedding_fingerprint

    enc = load_encoder(random_encoder_dir(0))
    assert output_fingerprint is embedding_fingerprint
    same = embedding_fingerprint(enc.config, enc.params, pooling="none", dtype="float32", max_length=None)
    assert cache_attrs(enc, "float32", "float32")["fingerprint"] == same
    assert len({same, cache_attrs(enc, "bfloat16", "float32")["fingerprint"],
                cache_attrs(enc, "float32", "float16")["fingerprint"]}) == 3


def test_a_killed_cache_build_keeps_the_file_and_its_finished_parts(tmp_path, random_encoder_dir, monkeypatch):
    """Issue 22: the cache was opened with mode "a" and written in place. Now a run killed mid-way leaves the file
    byte-identical and its finished batches as parts; the rerun embeds only the rest, every sequence once, with
    the values of an uninterrupted run."""
    from ankh_jax.downstream import embedding_cache
    from ankh_jax.io.embeddings_h5 import partial_dir

    enc = load_encoder(random_encoder_dir(0))
    path = str(tmp_path / "embeddings.h5")
    build_cache(enc, ["MKVLAAGG"], path, progress=False).close()
    before = (tmp_path / "embeddings.h5").read_bytes()
    seqs = ["MKVLAAGG", "GSHMSLFDFFKNK", "WWYYAACC", "PPKKLLM"]
    real = embedding_cache._embed

    def dies_after_two(*args, **kwargs):
        for n, item in enumerate(real(*args, **kwargs)):
            if n == 2:
                raise KeyboardInterrupt  # what a kill looks like to the code after it
            yield item

    monkeypatch.setattr(embedding_cache, "_embed", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_cache(enc, seqs, path, progress=False, flush_seconds=0.0)
    assert (tmp_path / "embeddings.h5").read_bytes() == before
    assert len(list((tmp_path / "embeddings.h5.partial").glob("part-*.h5"))) == 2
    monkeypatch.setattr(embedding_cache, "_embed", real)
    messages = []
    store = build_cache(enc, seqs, path, progress=False, log=messages.append)
    assert messages[0].startswith("embedding 1 sequences") and "3 cached" in messages[0]
    for s, e in zip(seqs, embed_sequences(enc.config, enc.params, seqs), strict=True):
        np.testing.assert_allclose(store[s], e, rtol=1e-5, atol=1e-6)
    store.close()
    assert not (tmp_path / "embeddings.h5.partial").exists() and partial_dir(path).endswith(".partial")


def test_a_cache_of_the_earlier_format_is_refused_untouched(tmp_path, random_encoder_dir):
    """Caches written in place before (no format version, no ids) cannot be resumed by the crash-safe writer."""
    import h5py

    from ankh_jax.downstream.embedding_cache import CacheMismatchError

    path = tmp_path / "embeddings.h5"
    with h5py.File(path, "w") as f:
        f.attrs["fingerprint"] = "sha256:0"
        f.create_dataset("0" * 40, data=np.zeros((3, 4), np.float32))
    before = path.read_bytes()
    with pytest.raises(CacheMismatchError, match=r"embeddings.h5: an embedding cache of another ankh_jax version"):
        build_cache(load_encoder(random_encoder_dir(0)), ["MKV"], str(path), progress=False)
    assert path.read_bytes() == before and not (tmp_path / "embeddings.h5.partial").exists()
