"""HuggingFace import/export against transformers' own PyTorch T5 (the independent reference).

A small Ankh-shaped model (attention width 4 x 8 = 32 != d_model 48, 3 encoder / 2 decoder layers, sequences
longer than the relative-position max distance, padding in the batch) with every parameter random:
  * exported by ankh_jax, loaded by T5ForConditionalGeneration / T5EncoderModel: logits and hidden states agree
    within 1e-4 relative (fp32);
  * built and saved by transformers (safetensors, shards, bf16, pytorch_model.bin, encoder-only, tied heads),
    imported by ankh_jax: the same;
  * export -> import is bit-exact.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from t5_parity import SEQS, assert_close, batch, ours_hidden, ours_logits, torch_hidden, torch_logits

from ankh_jax.data.tokenizer import AnkhTokenizer
from ankh_jax.io import hf_export, hf_files, hf_mapping
from ankh_jax.model import T5Config, Transformer, params_layout

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = T5Config.tiny(d_model=48, d_ff=80, num_heads=4, d_kv=8, num_encoder_layers=3, num_decoder_layers=2,
                    relative_attention_num_buckets=16, relative_attention_max_distance=20)


def random_params(config: T5Config, seed: int = 0) -> dict:
    """Initialised params with every leaf (norm scales too) perturbed, so no mapping error can hide."""
    variables = jax.jit(Transformer(config).init)(jax.random.PRNGKey(seed), jnp.ones((1, 4), jnp.int32),
                                                  jnp.ones((1, 4), jnp.int32))
    leaves, tree = jax.tree_util.tree_flatten(nn.unbox(variables["params"]))
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(x) + rng.normal(0, 0.2, x.shape).astype(np.float32) for x in leaves]
    return jax.tree_util.tree_unflatten(tree, leaves)


def hf_model_config(**kw) -> "transformers.T5Config":
    return transformers.T5Config(
        vocab_size=144, d_model=CFG.d_model, d_kv=CFG.d_kv, d_ff=CFG.d_ff, num_layers=CFG.num_encoder_layers,
        num_decoder_layers=CFG.num_decoder_layers, num_heads=CFG.num_heads, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=CFG.relative_attention_num_buckets,
        relative_attention_max_distance=CFG.relative_attention_max_distance, dropout_rate=0.0,
        decoder_start_token_id=0, **kw)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


@pytest.fixture(scope="module")
def exported(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_full")
    hf_export.export(CFG, params, str(out))
    return out


def test_exported_model_loads_in_transformers_with_same_logits(params, exported):
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and cfg["feed_forward_proj"] == "gated-gelu"
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(exported)).eval()
    assert not model.config.scale_decoder_outputs
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()  # untied
    assert_close(ours_logits(CFG, params), torch_logits(model))
    assert_close(ours_hidden(CFG, params), torch_hidden(model.encoder), valid=batch()[1] > 0)
    tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    assert tok(SEQS[0])["input_ids"] == AnkhTokenizer().encode(SEQS[0]).tolist()
    with torch.no_grad():  # the tokenizer's output is exactly what the model takes (no token_type_ids)
        hidden = model.encoder(**tok([s.lower() for s in SEQS], padding=True, return_tensors="pt"))
    assert_close(ours_hidden(CFG, params), hidden.last_hidden_state.numpy(), valid=batch()[1] > 0)
    assert (exported / "README.md").read_text().startswith("---")


def test_export_hf_repairs_a_transformers5_resave(params, exported, tmp_path):
    """transformers 5's save_pretrained writes tie_word_embeddings: true beside the untied head; transformers 4
    then ties the head to the embeddings (logits off by ~5). export_hf on that directory, in place, writes
    tie_word_embeddings: false again with the same weights."""
    from ankh_jax import export_hf

    resaved = tmp_path / "resaved"
    transformers.T5ForConditionalGeneration.from_pretrained(str(exported)).save_pretrained(str(resaved))
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert json.loads((resaved / "config.json").read_text())["tie_word_embeddings"] is True  # the hazard
    assert export_hf.main([f"--model={resaved}", f"--output={resaved}"]) == 0
    cfg = json.loads((resaved / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False and "scale_decoder_outputs" not in cfg
    assert hf_mapping.lm_head_scale_of(cfg) == 1.0  # transformers 4's reading: untied, not rescaled
    _, repaired = hf_files.load_hf_model(str(resaved))
    np.testing.assert_array_equal(repaired["decoder"]["logits_dense"]["kernel"],
                                  params["decoder"]["logits_dense"]["kernel"])
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(resaved)).eval()
    assert_close(ours_logits(CFG, params), torch_logits(model))


def test_exported_encoder_only_loads_as_t5_encoder_model(params, tmp_path):
    hf_export.export(CFG, params, str(tmp_path), encoder_only=True)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["T5EncoderModel"]
    model = transformers.T5EncoderModel.from_pretrained(str(tmp_path)).eval()
    assert_close(ours_hidden(CFG, params), torch_hidden(model), valid=batch()[1] > 0)


def test_round_trip_is_exact_and_scanned_params_export_the_same(params, exported, tmp_path):
    config, back = hf_files.load_hf_model(str(exported))
    assert config.replace(dropout_rate=CFG.dropout_rate) == CFG
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, back)
    stacked = params_layout.stack_layers(params, CFG.replace(scan_layers=True))
    again = hf_mapping.params_to_hf(stacked, CFG.replace(scan_layers=True))
    first = hf_mapping.params_to_hf(params, CFG)
    assert set(again) == set(first)
    for k in first:
        np.testing.assert_array_equal(again[k], first[k])
    # Loading with scan_layers gives the stacked layout directly.
    _, scanned = hf_files.load_hf_model(str(exported), scan_layers=True)
    jax.tree_util.tree_map(np.testing.assert_array_equal, stacked, scanned)


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """A model built by transformers (random init, head untied by hand), saved by save_pretrained."""
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(hf_model_config(tie_word_embeddings=False)).eval()
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # norm scales off 1, relative bias non-trivial
    out = tmp_path_factory.mktemp("hf_saved")
    model.save_pretrained(str(out))
    return model, out


def test_transformers_saved_model_imports_with_same_logits(hf_saved):
    model, path = hf_saved
    config, params = hf_files.load_hf_model(str(path))
    assert "decoder" in params
    assert_close(ours_logits(config, params), torch_logits(model))


def test_sharded_bf16_and_torch_bin_checkpoints_import(hf_saved, tmp_path):
    model, path = hf_saved
    _, reference = hf_files.load_hf_model(str(path))
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="100KB")
    assert (tmp_path / "sharded" / hf_files.SAFETENSORS_INDEX).exists()
    _, sharded = hf_files.load_hf_model(str(tmp_path / "sharded"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, reference, sharded)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((path / "config.json").read_text())
    torch.save(model.state_dict(), bin_dir / hf_files.TORCH_FILE)  # includes the tied embed_tokens copies
    _, from_bin = hf_files.load_hf_model(str(bin_dir))
    jax.tree_util.tree_map(np.testing.assert_array_equal, reference, from_bin)

    bf16 = transformers.T5ForConditionalGeneration.from_pretrained(str(path), dtype=torch.bfloat16)
    bf16.save_pretrained(str(tmp_path / "bf16"))
    _, from_bf16 = hf_files.load_hf_model(str(tmp_path / "bf16"))
    expected = bf16.encoder.block[1].layer[1].DenseReluDense.wo.weight.detach().float().numpy().T
    np.testing.assert_array_equal(from_bf16["encoder"]["layers_1"]["mlp"]["wo"]["kernel"], expected)


def test_safetensors_are_read_by_the_library_every_dtype(tmp_path):
    """safetensors.safe_open reads what the format holds (bfloat16, unsigned ints, ...), not a hand-kept subset."""
    import ml_dtypes
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    state = {"bf16": rng.normal(size=(3, 4)).astype(ml_dtypes.bfloat16), "u16": np.arange(6, dtype=np.uint16),
             "u32": np.arange(4, dtype=np.uint32).reshape(2, 2), "f16": rng.normal(size=5).astype(np.float16)}
    save_file(state, str(tmp_path / hf_files.SAFETENSORS_FILE))
    loaders, files = hf_files.open_weights(str(tmp_path))
    assert files == hf_files.SAFETENSORS_FILE and set(loaders) == set(state)
    for name, value in state.items():
        got = loaders[name]()
        assert got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_tied_heads_import_with_transformers_semantics(tmp_path):
    """transformers 5's default (tied, unscaled) and 4's original T5 (tied, scaled by d_model**-0.5)."""
    torch.manual_seed(1)
    model = transformers.T5ForConditionalGeneration(hf_model_config(tie_word_embeddings=False)).eval()
    model.save_pretrained(str(tmp_path))
    assert not any("lm_head" in k for k in hf_files.open_weights(str(tmp_path))[0])
    config, params = hf_files.load_hf_model(str(tmp_path))
    assert_close(ours_logits(config, params), torch_logits(model))

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("scale_decoder_outputs")
    cfg["tie_word_embeddings"] = True  # the classic T5 convention: tied and rescaled
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    scaled = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
    assert scaled.config.scale_decoder_outputs
    config, params = hf_files.load_hf_model(str(tmp_path))
    assert_close(ours_logits(config, params), torch_logits(scaled))


def test_t5_encoder_model_checkpoint_imports(tmp_path):
    torch.manual_seed(2)
    model = transformers.T5EncoderModel(hf_model_config()).eval()
    model.save_pretrained(str(tmp_path))
    config, params = hf_files.load_hf_model(str(tmp_path))
    assert set(params) == {"token_embedder", "encoder"}
    assert_close(ours_hidden(config, params), torch_hidden(model), valid=batch()[1] > 0)


def test_wrong_shapes_and_missing_tensors_name_the_tensor(exported, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in os.listdir(exported):
        (bad / name).write_bytes((exported / name).read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "d_ff": cfg["d_ff"] + 1}))
    with pytest.raises(hf_files.CheckpointError, match=r"encoder\.block\.0\.layer\.1\.DenseReluDense\.wi_0\.weight"):
        hf_files.load_hf_model(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "num_layers": cfg["num_layers"] + 1}))
    with pytest.raises(hf_files.CheckpointError, match=r"missing tensors.*encoder\.block\.3\."):
        hf_files.load_hf_model(str(bad))
    (bad / "config.json").write_text(json.dumps({**cfg, "feed_forward_proj": "relu"}))
    with pytest.raises(hf_files.CheckpointError, match="gated-gelu"):
        hf_files.load_hf_model(str(bad))
    (bad / "config.json").write_text(json.dumps(cfg))
    st = bad / hf_files.SAFETENSORS_FILE
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(hf_files.CheckpointError, match="truncated"):
        hf_files.load_hf_model(str(bad))


def test_export_cli_never_imports_tensorflow(hf_saved, tmp_path):
    _, path = hf_saved
    out = tmp_path / "cli_out"
    code = (f"import sys; from ankh_jax import export_hf; rc = export_hf.main(['--model={path}', '--output={out}', "
            "'--encoder_only']); bad = [m for m in ('tensorflow', 'seqio', 'transformers') if m in sys.modules]; "
            "assert rc == 0 and not bad, (rc, bad)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    model = transformers.T5EncoderModel.from_pretrained(str(out)).eval()
    config, params = hf_files.load_hf_model(str(out))
    assert_close(ours_hidden(config, params), torch_hidden(model), valid=batch()[1] > 0)
