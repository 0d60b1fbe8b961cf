"""The notebook API: load_model on HF and ankh_jax directories, .embed, the released-model loaders' messages."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import ankh_jax
from ankh_jax import api, export_hf
from ankh_jax.inference import embedding
from ankh_jax.io import checkpoints, hf_export, hf_files
from ankh_jax.model import T5Config, Transformer, params_layout

CFG = T5Config.tiny(d_model=32, d_ff=48, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)
SEQS = ["MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQ", "GSHMSLFDFF", "WYC"]


@pytest.fixture(scope="module")
def params():
    variables = jax.jit(Transformer(CFG).init)(jax.random.PRNGKey(5), jnp.ones((1, 4), jnp.int32),
                                               jnp.ones((1, 4), jnp.int32))
    return jax.tree_util.tree_map(np.asarray, nn.unbox(variables["params"]))


@pytest.fixture(scope="module")
def hf_dir(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_model")
    hf_export.export(CFG, params, str(out))
    return out


def test_load_model_from_hf_dir_and_embed(hf_dir, params):
    model = ankh_jax.load_model(hf_dir)
    assert model.config == CFG and model.has_decoder and model.num_params() == CFG.num_params()
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, model.params)
    expected = embedding.embed_sequences(CFG, params, SEQS)
    got = model.embed(SEQS)
    assert [g.shape for g in got] == [(len(s), CFG.d_model) for s in SEQS]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    pooled = model.embed(SEQS, pooling="mean")  # second call reuses the params already on device
    for p, e in zip(pooled, expected):
        np.testing.assert_allclose(p, e.mean(0), rtol=1e-5, atol=1e-6)
    assert ankh_jax.load_model(hf_dir, encoder_only=True).has_decoder is False


def test_load_model_from_ankh_jax_training_dir(params, tmp_path):
    """A scanned training run's checkpoint loads unrolled, embeds, and exports to HF bit-exactly."""
    train_cfg = CFG.replace(scan_layers=True, dtype="bfloat16")
    stacked = params_layout.stack_layers(params, train_cfg)
    run_dir = tmp_path / "run"
    checkpoints.write_model_config(str(run_dir), train_cfg)
    ckpt = checkpoints.Checkpointer(str(run_dir), save_interval_steps=1, async_save=False)
    ckpt.save(7, jax.tree_util.tree_map(jnp.asarray, stacked), {"count": jnp.zeros(())}, {"position": 0})
    later = jax.tree_util.tree_map(lambda x: jnp.asarray(x) * 2, stacked)
    ckpt.save(9, later, {"count": jnp.ones(())}, {"position": 1})
    ckpt.close()

    assert api.model_format(run_dir) == "ankh_jax"
    latest = ankh_jax.load_model(run_dir, scan_layers=True)  # step 9, in the stacked (embedding) layout
    assert latest.config.scan_layers
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, np.asarray(b)), latest.params, later)
    model = ankh_jax.load_model(run_dir, step=7)
    assert model.config == CFG.replace(dtype="bfloat16")
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, model.params)
    np.testing.assert_array_equal(model.embed(SEQS[:1])[0], embedding.embed_sequences(CFG, params, SEQS[:1])[0])

    out = tmp_path / "exported"
    assert export_hf.main([f"--model={run_dir}", "--step=7", f"--output={out}"]) == 0
    config, back = hf_files.load_hf_model(out)
    assert config.d_model == CFG.d_model
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, back)


def test_released_model_without_local_copy_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(api.HOME_ENV, str(tmp_path))
    monkeypatch.delenv("ANKH_JAX_BASE_MODEL", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        ankh_jax.load_base_model()
    msg = str(e.value)
    assert f"huggingface-cli download ElnaggarLab/ankh-base --local-dir {tmp_path / 'ankh-base'}" in msg
    assert "ANKH_JAX_BASE_MODEL" in msg


def test_released_model_env_var_and_shape_check(hf_dir, monkeypatch):
    monkeypatch.setenv("ANKH_JAX_LARGE_MODEL", str(hf_dir))
    assert api.released_model_dir("large") == str(hf_dir)
    with pytest.raises(ValueError, match="d_model=32, but Ankh Large has 1536"):
        ankh_jax.load_large_model()
    with pytest.raises(ValueError, match="Ankh Base has 768"):
        ankh_jax.load_base_model(hf_dir)


def test_unknown_directories_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model directory"):
        ankh_jax.load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="neither an ankh_jax training directory"):
        ankh_jax.load_model(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(hf_files.CheckpointError, match="model_type 'bert'"):
        ankh_jax.load_model(tmp_path)


def test_import_ankh_jax_is_light():
    code = ("import sys, ankh_jax; heavy = [m for m in ('jax', 'flax', 'tensorflow', 'torch', 'transformers') "
            "if m in sys.modules]; assert not heavy, heavy; assert callable(ankh_jax.load_model)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
