"""Embeddings: padding never changes a result, outputs match transformers' T5EncoderModel, the CLI's HDF5 output,
resume, input errors before compute, and no TensorFlow on the embedding path."""

import gzip
import json
import os
import re
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ankh_jax import embed
from ankh_jax.data.fasta import load_fasta, write_fasta
from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.inference import embedding
from ankh_jax.io import embeddings_h5, hf_export
from ankh_jax.model import EncoderOnly, T5Config, Transformer
from ankh_jax.testing import apply_jitted

CFG = T5Config.tiny(d_model=32, d_ff=64, num_heads=4, d_kv=8, num_encoder_layers=2, num_decoder_layers=1,
                    relative_attention_num_buckets=16, relative_attention_max_distance=32)
ALONE_TOL = 1e-5  # max |difference| relative to max |embedding|: float32 rounding of a different summation order


def assert_agree(ours, ref, tol=ALONE_TOL):
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err <= tol, f"max |difference| is {err:.2e} of max |embedding|"


@pytest.fixture(scope="module")
def params():
    variables = jax.jit(Transformer(CFG).init)(jax.random.PRNGKey(3), jnp.ones((1, 4), jnp.int32),
                                               jnp.ones((1, 4), jnp.int32))
    leaves, tree = jax.tree_util.tree_flatten(nn.unbox(variables["params"]))
    rng = np.random.default_rng(3)
    return jax.tree_util.tree_unflatten(tree, [np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(np.float32)
                                               for x in leaves])


@pytest.fixture(scope="module")
def records(sample_fasta):
    recs = load_fasta(sample_fasta)
    # A spread of lengths (short to long) from the shipped proteins, so several buckets are used.
    by_len = sorted(recs, key=lambda r: len(r.sequence))
    return by_len[:: len(by_len) // 24][:24]


@pytest.fixture(scope="module")
def model_dir(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    hf_export.export(CFG, params, str(out))
    return out


def reference(params, seq):
    """The encoder on the sequence alone, unpadded, unscanned: [L, d] with </s> dropped."""
    ids = AnkhTokenizer().encode(seq)[None]
    enc = {k: params[k] for k in ("token_embedder", "encoder")}
    return np.asarray(apply_jitted(EncoderOnly(CFG), {"params": enc}, ids))[0, :-1]


def test_alone_and_inside_a_padded_batch_agree(params, records):
    seqs = [r.sequence for r in records]
    batched = embedding.embed_sequences(CFG, params, seqs, batch_tokens=1024)
    pooled = embedding.embed_sequences(CFG, params, seqs, pooling="mean", batch_tokens=1024)
    for i in (0, 7, len(seqs) - 1):  # shortest (most padded), middle, longest
        alone = embedding.embed_sequences(CFG, params, [seqs[i]])[0]
        ref = reference(params, seqs[i])
        assert batched[i].shape == (len(seqs[i]), CFG.d_model) and batched[i].dtype == np.float32
        assert_agree(batched[i], alone)
        assert_agree(batched[i], ref)  # unpadded, unscanned, outside the embedding code
        assert_agree(pooled[i], ref.mean(axis=0))


def test_matches_transformers_t5_encoder_model(params, records, model_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.T5EncoderModel.from_pretrained(str(model_dir)).eval()
    seqs = [r.sequence for r in records[:6]]
    ours = embedding.embed_sequences(CFG, params, seqs)
    ids, mask = AnkhTokenizer().batch_encode(seqs)
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids, dtype=torch.long),
                       attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    for i, seq in enumerate(seqs):
        ref = hidden[i, : len(seq)]
        assert np.abs(ours[i] - ref).max() / np.abs(ref).max() < 1e-4


def test_bfloat16_close_to_float32(params, records):
    seqs = [r.sequence for r in records[:4]]
    f32 = embedding.embed_sequences(CFG, params, seqs)
    b16 = embedding.embed_sequences(CFG, params, seqs, dtype="bfloat16")
    for a, b in zip(f32, b16):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert 0 < np.abs(a - b).max() / np.abs(a).max() < 0.1


def test_max_length_truncates_to_a_prefix(params):
    seq = "MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQEVAGS"
    cut = embedding.embed_sequences(CFG, params, [seq], max_length=11)[0]
    assert_agree(cut, reference(params, seq[:10]))


def test_chunked_attention_is_picked_per_bucket_and_equals_plain(params, records, monkeypatch):
    assert embedding.chunk_size_for_width(2048) == 0 and embedding.chunk_size_for_width(2049) == 1024
    assert embedding.chunk_size_for_width(4096, 0) == 0 and embedding.chunk_size_for_width(100, 64) == 64
    assert embedding.chunk_size_for_width(64, 64) == 0
    with pytest.raises(ValueError, match="attention_chunk_size"):
        embedding.embed_sequences(CFG, params, ["MKV"], attention_chunk_size=-1)
    seqs = [r.sequence for r in records]
    plain = embedding.embed_sequences(CFG, params, seqs, batch_tokens=1024, attention_chunk_size=0)
    chunked = embedding.embed_sequences(CFG, params, seqs, batch_tokens=1024, attention_chunk_size=16)
    for a, b in zip(chunked, plain, strict=True):
        assert_agree(a, b)
    # Automatic: only buckets wider than AUTO_CHUNK_ABOVE are chunked (shrunk here so the sample proteins cross it).
    used = []
    original = embedding.encoder_fn
    monkeypatch.setattr(embedding, "encoder_fn", lambda cfg, pooling, **kw: used.append(cfg.attention_chunk_size)
                        or original(cfg, pooling, **kw))
    monkeypatch.setattr(embedding, "AUTO_CHUNK_ABOVE", 128)
    monkeypatch.setattr(embedding, "AUTO_CHUNK_SIZE", 64)
    auto = embedding.embed_sequences(CFG, params, seqs, batch_tokens=1024)
    assert 0 in used and 64 in used
    for a, b in zip(auto, plain, strict=True):
        assert_agree(a, b)


def test_input_errors_are_reported_before_any_compute(tmp_path, model_dir, capsys):
    cases = {
        "dup.fasta": ">a\nMKV\n>b\nGS\n>a\nWW\n",
        "empty.fasta": ">a\nMKV\n>b\n\n>c\nGS\n",
        "bad.fasta": ">a\nMKV\n>b\nGSJK\n",
    }
    expected = {"dup.fasta": "duplicate id 'a'", "empty.fasta": "'b'", "bad.fasta": "'b'.*position 3"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        out = tmp_path / (name + ".h5")
        rc = embed.main([f"--model={model_dir}", f"--fasta={tmp_path / name}", f"--output={out}", "--no_progress",
                         "--compilation_cache_dir="])
        err = capsys.readouterr().err
        assert rc == 2 and name in err
        assert re.search(expected[name], err), err
        assert not out.exists()
    (tmp_path / "ok.fasta").write_text(">a\nMKV\n")
    rc = embed.main([f"--model={model_dir}", f"--fasta={tmp_path / 'ok.fasta'}", f"--output={tmp_path / 'ok.h5'}",
                     "--attention_chunk_size=-1", "--no_progress", "--compilation_cache_dir="])
    assert rc == 2 and "--attention_chunk_size=-1" in capsys.readouterr().err
    assert not (tmp_path / "ok.h5").exists()


def test_cli_writes_hdf5_and_resumes(tmp_path, model_dir, records, params):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, records[:10])
    out = tmp_path / "out.h5"
    args = [f"--model={model_dir}", f"--output={out}", "--no_progress", "--batch_tokens=512",
            "--compilation_cache_dir="]
    assert embed.main(args + [f"--fasta={fasta}"]) == 0
    first = embeddings_h5.read_embeddings(str(out))
    assert set(first) == {r.id for r in records[:10]}  # ids with '/' survive (stored as %2F)
    with h5py.File(out, "r") as f:
        assert f.attrs["pooling"] == "none" and f.attrs["dtype"] == "float32" and f.attrs["d_model"] == CFG.d_model
        ds = f[embeddings_h5.h5_key(records[0].id)]
        assert ds.attrs["id"] == records[0].id and ds.attrs["length"] == len(records[0].sequence)
    assert_agree(first[records[3].id], reference(params, records[3].sequence))

    # Re-run on a larger file: the ten already there are skipped and left untouched.
    write_fasta(fasta, records)
    assert embed.main(args + [f"--fasta={fasta}"]) == 0
    metrics = json.loads((tmp_path / "out.metrics.json").read_text())
    assert metrics["skipped_existing"] == 10 and metrics["sequences_embedded"] == len(records) - 10
    assert metrics["residues_per_second"] > 0
    second = embeddings_h5.read_embeddings(str(out))
    assert set(second) == {r.id for r in records}
    for r in records[:10]:
        np.testing.assert_array_equal(second[r.id], first[r.id])

    # Different settings on the same output: refused, file untouched.
    assert embed.main(args + [f"--fasta={fasta}", "--pooling=mean"]) == 2


def test_mean_pooling_cli(tmp_path, model_dir, records, params):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, records[:3])
    out = tmp_path / "pooled.h5"
    assert embed.main([f"--model={model_dir}", f"--fasta={fasta}", f"--output={out}", "--pooling=mean",
                       "--no_progress", "--compilation_cache_dir="]) == 0
    got = embeddings_h5.read_embeddings(str(out))
    for r in records[:3]:
        assert got[r.id].shape == (CFG.d_model,)
        assert_agree(got[r.id], reference(params, r.sequence).mean(0))


def test_embed_cli_never_imports_tensorflow(tmp_path, model_dir, sample_fasta):
    fasta = tmp_path / "gz.fasta.gz"
    with gzip.open(fasta, "wt") as f:
        f.write(">x/1-3\nMKVLA\n>y\nGSWWC\n")
    out = tmp_path / "o.h5"
    cache = tmp_path / "xla_cache"
    code = (f"import sys; from ankh_jax import embed; rc = embed.main(['--model={model_dir}', '--fasta={fasta}', "
            f"'--output={out}', '--compilation_cache_dir={cache}']); "
            "bad = [m for m in ('tensorflow', 'seqio', 'transformers', 'torch') if m in sys.modules]; "
            "assert rc == 0 and not bad, (rc, bad)")
    proc = subprocess.run([sys.executable, "-c", code], check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "res/s" in proc.stderr  # the progress bar reports residues per second
    assert set(embeddings_h5.read_embeddings(str(out))) == {"x/1-3", "y"}
    assert any(cache.iterdir())  # the compiled encoder was cached for the next run
