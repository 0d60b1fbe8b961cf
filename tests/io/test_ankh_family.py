"""The Ankh family beyond Ankh itself, against transformers' PyTorch T5 (the independent reference).

  * Ankh2 (gated-SiLU): a tiny random T5 with ``feed_forward_proj="gated-silu"`` built by transformers imports
    with the same encoder and decoder outputs; an export says gated-silu and transformers reads it back the same;
  * transformers' Flax weights (``flax_model.msgpack``, as ``FlaxT5ForConditionalGeneration`` /
    ``FlaxT5EncoderModel`` write them): the test builds the tree from a PyTorch model's weights with FlaxT5's own
    names, in float32 and bfloat16, full and encoder-only; ``export --flax`` writes the same tree;
  * other Ankh-shaped sizes load from ``config.json`` alone; a non-gated or unsupported T5 is refused in one line.
"""

import json

import jax
import numpy as np
import pytest
from t5_parity import assert_close, batch, ours_hidden, ours_logits, rel_err, torch_hidden, torch_logits

from ankh_jax.io import CheckpointError, flax_msgpack, hf_export, hf_files, loading
from ankh_jax.model import T5Config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
serialization = pytest.importorskip("flax.serialization")

ERRORS = {}  # family member -> max relative error, printed at the end (the closing note)


def hf_config(proj: str = "gated-gelu", **sizes) -> "transformers.T5Config":
    shape = {"d_model": 48, "d_kv": 8, "d_ff": 80, "num_layers": 3, "num_decoder_layers": 2, "num_heads": 4}
    shape.update(sizes)
    return transformers.T5Config(vocab_size=144, feed_forward_proj=proj, relative_attention_num_buckets=16,
                                 relative_attention_max_distance=20, dropout_rate=0.0, decoder_start_token_id=0,
                                 tie_word_embeddings=False, **shape)


def random_hf_model(config, seed: int, cls=None):
    """A transformers model with every weight random (norm scales off 1, untied head)."""
    torch.manual_seed(seed)
    model = (cls or transformers.T5ForConditionalGeneration)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if hasattr(model, "lm_head"):
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    return model


def check_parity(name, config, params, model):
    """Decoder logits and encoder states of ours vs transformers within test_hf's tolerance; records the error."""
    valid = batch()[1] > 0
    encoder = model.encoder if hasattr(model, "encoder") else model
    hidden = ours_hidden(config, params)
    assert_close(hidden, torch_hidden(encoder), valid=valid)
    errors = [rel_err(hidden, torch_hidden(encoder), valid)]
    if "decoder" in params:
        logits = ours_logits(config, params)
        assert_close(logits, torch_logits(model))
        errors.append(rel_err(logits, torch_logits(model)))
    ERRORS[name] = max(errors)
    print(f"parity {name}: max relative error {ERRORS[name]:.2e}")


@pytest.fixture(scope="module")
def ankh2(tmp_path_factory):
    model = random_hf_model(hf_config("gated-silu"), seed=3)
    assert model.config.dense_act_fn == "silu" and model.config.is_gated_act
    out = tmp_path_factory.mktemp("ankh2")
    model.save_pretrained(str(out))
    return model, out


def test_ankh2_gated_silu_imports_with_transformers_outputs(ankh2):
    model, path = ankh2
    config, params = loading.load(path)
    assert config.activation == "silu"
    check_parity("ankh2 (gated-silu)", config, params, model)
    # The gelu_new model with the same weights is a different function: the activation really is used.
    assert rel_err(ours_logits(config.replace(activation="gelu_new"), params), torch_logits(model)) > 1e-2


def test_ankh2_export_round_trip(ankh2, tmp_path):
    _, path = ankh2
    config, params = loading.load(path)
    hf_export.export(config, params, str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (written["feed_forward_proj"], written["dense_act_fn"]) == ("gated-silu", "silu")
    again = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out")).eval()
    assert again.config.dense_act_fn == "silu"
    assert_close(ours_logits(config, params), torch_logits(again))
    config2, params2 = loading.load(tmp_path / "out")
    assert config2.activation == "silu"
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_ankh2_preset_is_ankh_large_with_silu():
    large, ankh2 = T5Config.ankh_large(), T5Config.ankh2_large()
    assert ankh2 == large.replace(activation="silu") and large.activation == "gelu_new"
    assert ankh2.to_hf_dict()["feed_forward_proj"] == "gated-silu"
    assert T5Config.from_hf_dict(ankh2.to_hf_dict()) == ankh2.replace(dropout_rate=ankh2.dropout_rate)
    assert T5Config.from_json(large.to_json()) == large
    old = json.loads(large.to_json())
    old.pop("activation")  # a model_config.json written before the field existed is Ankh's gelu_new
    assert T5Config.from_dict(old).activation == "gelu_new"


@pytest.mark.parametrize("sizes", [
    {"num_layers": 1, "num_decoder_layers": 3, "num_heads": 2, "d_kv": 12, "d_ff": 40},
    {"d_model": 32, "num_layers": 4, "num_decoder_layers": 1, "num_heads": 8, "d_kv": 4}])
def test_other_ankh_shaped_sizes_load_from_config_json_alone(sizes, tmp_path):
    model = random_hf_model(hf_config(**sizes), seed=4)
    model.save_pretrained(str(tmp_path))
    config, params = loading.load(tmp_path)
    assert (config.num_encoder_layers, config.num_decoder_layers, config.num_heads, config.d_kv) == (
        sizes["num_layers"], sizes["num_decoder_layers"], sizes["num_heads"], sizes["d_kv"])
    check_parity(f"Ankh-shaped T5 {sizes}", config, params, model)


@pytest.mark.parametrize("proj, why", [("relu", "non-gated"), ("gelu", "non-gated"), ("gated-relu", "'relu'"),
                                       ("gated-gelu_fast", "'gelu_fast'")])
def test_unsupported_t5_is_refused_in_one_line(proj, why, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config("gated-gelu").to_dict() | {"feed_forward_proj": proj}))
    with pytest.raises(CheckpointError) as err:
        loading.load(tmp_path)
    message = str(err.value)
    assert "\n" not in message and why in message and proj in message and "config.json" in message


# -- Flax msgpack --------------------------------------------------------------------------------------------------

def flax_tree_from_torch(model, dtype=np.float32) -> dict:
    """The parameter tree transformers 4.x's FlaxT5 classes hold for this PyTorch model, written out by hand from
    FlaxT5's module names: Linear weights become Dense kernels [in, out], Embeddings ``embedding``, norms keep
    ``weight``; the per-stack ``embed_tokens`` copies do not exist in Flax."""
    tree: dict = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("embed_tokens.weight"):
            continue
        parts = name.split(".")
        x = tensor.detach().float().numpy()
        if name == "shared.weight" or "relative_attention_bias" in name:
            parts[-1] = "embedding"
        elif "layer_norm" not in name:
            parts[-1], x = "kernel", x.T
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = np.ascontiguousarray(x).astype(dtype)
    return tree


def flat(tree) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def write_flax_dir(path, model, tree) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(path / "config.json"))
    (path / flax_msgpack.FLAX_FILE).write_bytes(serialization.msgpack_serialize(tree))


def test_flax_msgpack_full_model_imports_with_transformers_outputs(ankh2, tmp_path):
    model, _ = ankh2
    tree = flax_tree_from_torch(model)
    assert tree["encoder"]["block"]["0"]["layer"]["1"]["DenseReluDense"]["wi_0"]["kernel"].shape == (48, 80)
    assert tree["lm_head"]["kernel"].shape == (48, 144)
    write_flax_dir(tmp_path / "flax", model, tree)
    config, params = loading.load(tmp_path / "flax")
    check_parity("ankh2 Flax msgpack (float32)", config, params, model)
    _, encoder = loading.load(tmp_path / "flax", encoder_only=True)
    assert set(encoder) == {"token_embedder", "encoder"}


def test_flax_msgpack_bf16_encoder_only_like_ankh_large_encoder(tmp_path):
    import ml_dtypes

    model = random_hf_model(hf_config("gated-gelu"), seed=5, cls=transformers.T5EncoderModel)
    tree = flax_tree_from_torch(model, dtype=ml_dtypes.bfloat16)
    assert set(tree) == {"shared", "encoder"}
    write_flax_dir(tmp_path / "enc", model, tree)
    config, params = loading.load(tmp_path / "enc")
    assert set(params) == {"token_embedder", "encoder"}
    with torch.no_grad():  # the reference: the same model with its weights rounded to bfloat16
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    check_parity("ankh-large-encoder-shaped Flax msgpack (bfloat16)", config, params, model)


def test_export_flax_writes_the_flaxt5_tree_and_round_trips(ankh2, tmp_path):
    model, path = ankh2
    from ankh_jax import export_hf

    assert export_hf.main([f"--model={path}", f"--output={tmp_path / 'out'}", "--flax"]) == 0
    out = tmp_path / "out"
    assert (out / flax_msgpack.FLAX_FILE).exists() and not (out / hf_files.SAFETENSORS_FILE).exists()
    written = serialization.msgpack_restore((out / flax_msgpack.FLAX_FILE).read_bytes())
    expected = flax_tree_from_torch(model)
    got, want = flat(written), flat(expected)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=0, err_msg=k)
    config, params = loading.load(out)
    check_parity("ankh2 exported as Flax msgpack", config, params, model)

    assert export_hf.main([f"--model={path}", f"--output={tmp_path / 'enc'}", "--flax", "--encoder_only"]) == 0
    enc = serialization.msgpack_restore((tmp_path / "enc" / flax_msgpack.FLAX_FILE).read_bytes())
    assert set(enc) == {"shared", "encoder"}


def test_damaged_flax_msgpack_is_one_line(ankh2, tmp_path):
    model, _ = ankh2
    write_flax_dir(tmp_path / "bad", model, flax_tree_from_torch(model))
    f = tmp_path / "bad" / flax_msgpack.FLAX_FILE
    f.write_bytes(f.read_bytes()[: 1000])
    with pytest.raises(CheckpointError, match="not a Flax msgpack checkpoint"):
        loading.load(tmp_path / "bad")
    tree = flax_tree_from_torch(model)
    del tree["encoder"]["block"]["1"]
    write_flax_dir(tmp_path / "missing", model, tree)
    with pytest.raises(CheckpointError, match=r"missing tensors.*encoder\.block\.1\."):
        loading.load(tmp_path / "missing")


def test_parity_summary():
    """Prints every family member's parity error (run with -s to see it); runs last in this file."""
    for name, err in ERRORS.items():
        print(f"{name}: {err:.2e}")
        assert err < 1e-4
