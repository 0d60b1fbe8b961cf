"""ankh_jax.io.loading.load: one load path for both kinds of directory, the params normalised once per load.

The spy wraps ``params_layout.normalize`` (the one function that unboxes and converts layer layouts) and
``params_layout.stack_layers``, and counts their calls while the commands' library code runs: ``embed`` (a scanned
training checkpoint and an HF directory), ``export_hf`` and the decoding path of ``generate`` / ``score``.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ankh_jax import embed
from ankh_jax.inference import decoding, embedding
from ankh_jax.io import checkpoints, hf_export, hf_files, loading
from ankh_jax.model import T5Config, params_layout
from ankh_jax.testing import decoding_params

CFG = T5Config.tiny(d_model=32, d_ff=48, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=2,
                    relative_attention_num_buckets=8, relative_attention_max_distance=12)
SEQS = ["MKALCLLLLPVLGLLVSSKTLCS", "GSHMSLFDFF", "WYC"]


@pytest.fixture(scope="module")
def params():
    return decoding_params(3)  # the decoding tests' shapes: CFG above


@pytest.fixture(scope="module")
def scanned_run(params, tmp_path_factory):
    """An ankh_jax training directory written with ``scan_layers=True`` (stacked layers in the checkpoint)."""
    run = tmp_path_factory.mktemp("scanned") / "run"
    train_cfg = CFG.replace(scan_layers=True)
    checkpoints.write_model_config(str(run), train_cfg)
    ck = checkpoints.Checkpointer(str(run), save_interval_steps=1, async_save=False)
    stacked = params_layout.stack_layers(params, train_cfg)
    ck.save(2, jax.tree_util.tree_map(jnp.asarray, stacked), {"count": jnp.zeros(())}, {"position": 0})
    ck.close()
    return run


@pytest.fixture(scope="module")
def hf_dir(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf")
    hf_export.export(CFG, params, str(out))
    return out


@pytest.fixture
def spy(monkeypatch):
    calls = {"normalize": 0, "stack_layers": 0}
    for name in calls:
        real = getattr(params_layout, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(params_layout, name, counted)
    return calls


@pytest.mark.parametrize("source", ["scanned_run", "hf_dir"])
def test_embed_normalises_once_and_never_unrolls_a_scanned_checkpoint(source, request, tmp_path, spy, params):
    model = request.getfixturevalue(source)
    spy.update(normalize=0, stack_layers=0)  # count from here: writing the fixture's model is not loading it
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(SEQS)))
    args = embed.parse_args([f"--model={model}", f"--fasta={fasta}", f"--output={tmp_path / 'out.h5'}",
                             "--batch_tokens=256", "--flush_seconds=0", "--no_progress", "--compilation_cache_dir="])
    metrics = embed.run(args)  # the library code of python -m ankh_jax.embed: load, fingerprint, embed, write
    assert metrics["sequences_embedded"] == len(SEQS)
    assert spy["normalize"] == 1
    # A scanned checkpoint is already in the embedding encoder's layout; the HF one is stacked once, inside load.
    assert spy["stack_layers"] == (0 if source == "scanned_run" else 1)
    # The fingerprint (hashed unrolled) does not depend on the layout the weights were stored in.
    enc = params_layout.encoder_subtree(params)
    assert metrics["fingerprint"] == embedding.output_fingerprint(CFG, enc, pooling="none", dtype="float32",
                                                                  max_length=None)


@pytest.mark.parametrize("source", ["scanned_run", "hf_dir"])
def test_export_and_decoding_use_the_loaded_params_as_they_are(source, request, tmp_path, spy, params):
    model = request.getfixturevalue(source)
    spy.update(normalize=0, stack_layers=0)  # count from here: writing the fixture's model is not loading it
    config, loaded = loading.load(model)
    assert spy["normalize"] == 1 and not config.scan_layers
    assert params_layout.in_layout(loaded, config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)
    hf_export.export(config, loaded, str(tmp_path / "out"))
    decoding.prepare_params(decoding.decoding_config(config), loaded)
    assert spy["normalize"] == 1  # export and the decoding layout took the loaded tree as it was
    _, back = hf_files.load_hf_model(str(tmp_path / "out"))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, back)


def test_encoder_only_scanned_load_keeps_the_stacked_layers(scanned_run, spy):
    spy.update(normalize=0, stack_layers=0)
    config, loaded = loading.load(scanned_run, encoder_only=True, scan_layers=True)
    assert config.scan_layers and set(loaded) == {"token_embedder", "encoder"}
    assert "layers" in loaded["encoder"] and spy == {"normalize": 1, "stack_layers": 0}


def test_a_step_of_an_hf_directory_is_an_error(hf_dir):
    with pytest.raises(ValueError, match="HuggingFace directory: it has no steps"):
        loading.load(hf_dir, step=3)
