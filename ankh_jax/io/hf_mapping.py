"""HuggingFace T5 <-> ankh_jax: the parameter-name mapping and the ``config.json`` translation (no file I/O).

HF's PyTorch T5 stores every projection as a ``Linear`` weight ``[out, in]`` with the heads flattened; ankh_jax
keeps kernels ``[in, out]`` with an explicit head axis. The mapping is a pure reshape/transpose, so a round trip is
bit-exact. Reading and writing the files themselves is ``ankh_jax.io.hf_files``.

Tied heads: transformers 4 ties ``lm_head`` to ``shared`` and multiplies the decoder output by ``d_model**-0.5``
unless ``config.json`` says ``"tie_word_embeddings": false`` (Ankh's released models say so). transformers 5 always
ties on a fresh model and records the rescale as ``scale_decoder_outputs``. ankh_jax has an untied head and no
rescale, so on import a missing ``lm_head.weight`` is taken from ``shared.weight`` and any rescale is folded into
the head's kernel. Export always writes an untied head with ``"tie_word_embeddings": false``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ankh_jax.errors import InputError
from ankh_jax.io import CheckpointError
from ankh_jax.model.config import T5Config

CONFIG_FILE = "config.json"

# Kinds of tensor: how an ankh_jax array becomes HF's and back.
_VECTOR, _EMBEDDING, _LINEAR, _QKV, _OUT, _RELPOS = "vector", "embedding", "linear", "qkv", "out", "relpos"
# Float dtypes numpy knows only through ml_dtypes (kind "V"); every other float dtype has kind "f".
_FLOAT_EXTENSION_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2")
# Tensors an HF checkpoint may hold that are copies of `shared.weight` (tied input embeddings).
_TIED_EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


# ----------------------------------------------------------------------------------------------------------------
# The mapping
# ----------------------------------------------------------------------------------------------------------------

def _attention_entries(hf_prefix: str, jax_prefix: tuple) -> list[tuple[str, tuple, str]]:
    out = []
    for hf_name, jax_name in (("q", "query"), ("k", "key"), ("v", "value")):
        out.append((f"{hf_prefix}.{hf_name}.weight", jax_prefix + (jax_name, "kernel"), _QKV))
    out.append((f"{hf_prefix}.o.weight", jax_prefix + ("out", "kernel"), _OUT))
    return out


def _mlp_entries(hf_prefix: str, jax_prefix: tuple) -> list[tuple[str, tuple, str]]:
    return [(f"{hf_prefix}.{n}.weight", jax_prefix + (n, "kernel"), _LINEAR) for n in ("wi_0", "wi_1", "wo")]


def parameter_map(config: T5Config, *, encoder_only: bool = False) -> list[tuple[str, tuple, str]]:
    """``(hf_key, ankh_jax_path, kind)`` for every tensor of the model, in HF's order."""
    entries = [("shared.weight", ("token_embedder", "embedding"), _EMBEDDING)]
    for i in range(config.num_encoder_layers):
        hf, jx = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
        entries += _attention_entries(f"{hf}.0.SelfAttention", jx + ("attention",))
        if i == 0:
            entries.append((f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                            ("encoder", "relpos_bias", "rel_embedding"), _RELPOS))
        entries.append((f"{hf}.0.layer_norm.weight", jx + ("pre_attention_layer_norm", "scale"), _VECTOR))
        entries += _mlp_entries(f"{hf}.1.DenseReluDense", jx + ("mlp",))
        entries.append((f"{hf}.1.layer_norm.weight", jx + ("pre_mlp_layer_norm", "scale"), _VECTOR))
    entries.append(("encoder.final_layer_norm.weight", ("encoder", "encoder_norm", "scale"), _VECTOR))
    if encoder_only:
        return entries
    for i in range(config.num_decoder_layers):
        hf, jx = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
        entries += _attention_entries(f"{hf}.0.SelfAttention", jx + ("self_attention",))
        if i == 0:
            entries.append((f"{hf}.0.SelfAttention.relative_attention_bias.weight",
                            ("decoder", "relpos_bias", "rel_embedding"), _RELPOS))
        entries.append((f"{hf}.0.layer_norm.weight", jx + ("pre_self_attention_layer_norm", "scale"), _VECTOR))
        entries += _attention_entries(f"{hf}.1.EncDecAttention", jx + ("encoder_decoder_attention",))
        entries.append((f"{hf}.1.layer_norm.weight", jx + ("pre_cross_attention_layer_norm", "scale"), _VECTOR))
        entries += _mlp_entries(f"{hf}.2.DenseReluDense", jx + ("mlp",))
        entries.append((f"{hf}.2.layer_norm.weight", jx + ("pre_mlp_layer_norm", "scale"), _VECTOR))
    entries.append(("decoder.final_layer_norm.weight", ("decoder", "decoder_norm", "scale"), _VECTOR))
    entries.append(("lm_head.weight", ("decoder", "logits_dense", "kernel"), _LINEAR))
    return entries


def _hf_shape(config: T5Config, hf_key: str, kind: str) -> tuple[int, ...]:
    d, inner, v = config.d_model, config.num_heads * config.d_kv, config.vocab_size
    if kind == _VECTOR:
        return (d,)
    if kind == _EMBEDDING:
        return (v, d)
    if kind == _QKV:
        return (inner, d)
    if kind == _OUT:
        return (d, inner)
    if kind == _RELPOS:
        return (config.relative_attention_num_buckets, config.num_heads)
    if hf_key == "lm_head.weight":
        return (v, d)
    if hf_key.endswith("wo.weight"):
        return (d, config.d_ff)
    return (config.d_ff, d)  # wi_0 / wi_1


def _to_hf(x: np.ndarray, kind: str) -> np.ndarray:
    if kind in (_VECTOR, _EMBEDDING):
        return x
    if kind == _QKV:  # [d, h, kv] -> [h*kv, d]
        return x.reshape(x.shape[0], -1).T
    if kind == _OUT:  # [h, kv, d] -> [d, h*kv]
        return x.reshape(-1, x.shape[-1]).T
    return x.T       # LINEAR [in, out] -> [out, in]; RELPOS [h, buckets] -> [buckets, h]


def _from_hf(x: np.ndarray, kind: str, config: T5Config) -> np.ndarray:
    if kind in (_VECTOR, _EMBEDDING):
        return x
    if kind == _QKV:  # [h*kv, d] -> [d, h, kv]
        return x.T.reshape(config.d_model, config.num_heads, config.d_kv)
    if kind == _OUT:  # [d, h*kv] -> [h, kv, d]
        return x.T.reshape(config.num_heads, config.d_kv, config.d_model)
    return x.T


def _set_path(tree: dict, path: tuple, value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _get_path(tree: dict, path: tuple):
    node = tree
    for depth, name in enumerate(path):
        if not isinstance(node, dict) or name not in node:
            raise CheckpointError(f"ankh_jax params lack {'/'.join(path[:depth + 1])}")
        node = node[name]
    return node


def params_to_hf(params, config: T5Config, *, encoder_only: bool = False) -> dict[str, np.ndarray]:
    """HF state dict (float32 numpy, ``[out, in]``) from ankh_jax params (boxed or not, scanned or not)."""
    from ankh_jax.model import params_layout

    params = params_layout.plain_params(params, config)  # loaded (already plain, unrolled) params pass as they are
    if not encoder_only and "decoder" not in params:
        raise CheckpointError("these params hold no decoder (an encoder-only model): export with encoder_only=True")
    out = {}
    for hf_key, path, kind in parameter_map(config, encoder_only=encoder_only):
        x = np.asarray(_get_path(params, path), dtype=np.float32)
        out[hf_key] = np.ascontiguousarray(_to_hf(x, kind))
        expected = _hf_shape(config, hf_key, kind)
        if out[hf_key].shape != expected:
            raise CheckpointError(f"{'/'.join(path)}: shape {x.shape} does not fit the config (HF {hf_key} "
                                  f"would be {out[hf_key].shape}, expected {expected})")
    return out


def params_from_hf(get_tensor: Callable[[str], np.ndarray], keys: set[str], config: T5Config, *,
                   encoder_only: bool = False, lm_head_scale: float = 1.0, source: str = "checkpoint",
                   config_source: str = "the config") -> dict:
    """ankh_jax params (float32 numpy, unrolled) from HF tensors.

    ``get_tensor(key)`` returns one tensor (lazily, so a 7 GB checkpoint is converted one tensor at a time);
    ``keys`` are all the tensor names the checkpoint holds. Every expected tensor must be there with the shape the
    config implies; anything unexpected is an error too. The decoder is read unless ``encoder_only`` or the
    checkpoint holds none (a ``T5EncoderModel``).
    """
    has_decoder = any(k.startswith("decoder.") for k in keys)
    _check_layers_present(keys, config, source, config_source, decoder=has_decoder and not encoder_only)
    entries = parameter_map(config, encoder_only=encoder_only or not has_decoder)
    wanted = {k for k, _, _ in entries}
    available = set(keys)
    if "shared.weight" not in available:
        for alias in _TIED_EMBEDDING_KEYS:
            if alias in available:
                available.add("shared.weight")
                break
    if "lm_head.weight" in wanted and "lm_head.weight" not in available and "shared.weight" in available:
        available.add("lm_head.weight")  # tied head: the checkpoint stores it once, as shared.weight
    missing = sorted(wanted - available)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: missing tensors {missing[:5]}{more} for a model with "
                              f"{config.num_encoder_layers} encoder / {config.num_decoder_layers} decoder layers")
    ignorable = set(_TIED_EMBEDDING_KEYS)
    if encoder_only:
        ignorable |= {k for k in keys if k.startswith("decoder.") or k == "lm_head.weight"}
    unexpected = sorted(set(keys) - wanted - ignorable)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors {unexpected[:5]} (is this an Ankh-shaped T5 with "
                              f"{config.num_encoder_layers} encoder / {config.num_decoder_layers} decoder layers?)")

    def fetch(key: str) -> np.ndarray:
        if key in keys:
            return get_tensor(key)
        if key == "shared.weight":
            return get_tensor(next(a for a in _TIED_EMBEDDING_KEYS if a in keys))
        return fetch("shared.weight")  # lm_head tied to the embedding

    params: dict = {}
    for hf_key, path, kind in entries:
        x = np.asarray(fetch(hf_key))
        if x.dtype.kind != "f" and x.dtype.name not in _FLOAT_EXTENSION_DTYPES:
            raise CheckpointError(f"{source}: tensor {hf_key} is stored as {x.dtype}, not as floating point; "
                                  f"refusing integer or boolean weights")
        expected = _hf_shape(config, hf_key, kind)
        if tuple(x.shape) != expected:
            raise CheckpointError(f"{source}: tensor {hf_key} has shape {tuple(x.shape)}, the config implies "
                                  f"{expected}")
        x = np.array(_from_hf(x.astype(np.float32, copy=False), kind, config), dtype=np.float32, order="C")
        require_finite(x, f"{source}: tensor {hf_key}")
        if hf_key == "lm_head.weight" and lm_head_scale != 1.0:
            x *= np.float32(lm_head_scale)
        _set_path(params, path, x)
    return params


def _check_layers_present(keys: set[str], config: T5Config, source: str, config_source: str, *,
                          decoder: bool) -> None:
    """The layer counts of the config against the layers the weights hold, before anything is built per layer: a
    ``config.json`` saying ``num_layers: 10000000`` is refused at once, not after ten million layers' names."""
    stacks = [("encoder", config.num_encoder_layers, "num_layers")]
    if decoder:
        stacks.append(("decoder", config.num_decoder_layers, "num_decoder_layers"))
    for stack, wanted, field in stacks:
        prefix = f"{stack}.block."
        present = {k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)}
        if wanted > len(present):
            first = next(i for i in range(len(present) + 1) if str(i) not in present)
            raise CheckpointError(f"{source}: missing tensors for {stack} layers {first}.. ({prefix}{first}.*): "
                                  f"{config_source} says {field}={wanted}, the weights hold {len(present)} {stack} "
                                  "layers")


def require_finite(x: np.ndarray, what: str) -> None:
    """Refuses weights holding NaN or inf (a diverged or damaged model): every output would be NaN or worse."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CheckpointError(f"{what} holds {int(bad.sum())} non-finite values (first at index {first}: "
                              f"{x[first]}); refusing a damaged or diverged model")


# ----------------------------------------------------------------------------------------------------------------
# config.json
# ----------------------------------------------------------------------------------------------------------------

def config_to_hf(config: T5Config, *, encoder_only: bool = False) -> dict:
    """``config.json`` that transformers 4.x and 5.x both read as an untied, unscaled Ankh T5."""
    d = config.to_hf_dict()
    d["tie_word_embeddings"] = False
    d["dropout_rate"] = config.dropout_rate
    if encoder_only:
        d.update(architectures=["T5EncoderModel"], is_encoder_decoder=False, use_cache=False)
    return d


def lm_head_scale_of(hf_config: dict) -> float:
    """The factor transformers applies before ``lm_head`` for this ``config.json`` (1.0 for Ankh)."""
    if "scale_decoder_outputs" in hf_config:  # transformers 5 records it explicitly
        scaled = bool(hf_config["scale_decoder_outputs"])
    else:  # transformers 4: tie_word_embeddings (default true) means tied and rescaled
        scaled = hf_config.get("tie_word_embeddings", True) is not False
    return hf_config["d_model"] ** -0.5 if scaled else 1.0


def config_from_hf(hf_config: dict, *, source: str = CONFIG_FILE, **overrides) -> T5Config:
    """A :class:`T5Config` from an HF ``config.json`` dict; T5 variants ankh_jax cannot run are errors, and so is
    a size that is not an integer in range (named by its ``config.json`` field)."""
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{source}: holds a JSON {type(hf_config).__name__}, not an object of T5 settings")
    model_type = hf_config.get("model_type", "t5")
    if model_type != "t5":
        raise CheckpointError(f"{source}: model_type {model_type!r}; ankh_jax reads T5 (Ankh) models only")
    for key in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers"):
        if key not in hf_config:
            raise CheckpointError(f"{source}: no {key!r}; is this a T5 config.json?")
    # Tying is resolved by the weight loader (see the module docstring), not by the config.
    fields = {k: v for k, v in hf_config.items() if k != "tie_word_embeddings"}
    try:
        return T5Config.from_hf_dict(fields, **overrides)
    except InputError as e:
        message = str(e).replace("T5Config.num_encoder_layers", "num_layers").replace("T5Config.", "")
        raise CheckpointError(f"{source}: {message}") from None



# ----------------------------------------------------------------------------------------------------------------
# transformers' Flax T5 (flax_model.msgpack)
# ----------------------------------------------------------------------------------------------------------------
# FlaxT5 names its parameters after the PyTorch modules, so the two trees differ only in the leaf: a Linear's
# ``weight`` [out, in] is a Dense ``kernel`` [in, out], an Embedding's ``weight`` is ``embedding``, a layer norm
# keeps ``weight``. ``encoder.block.0.layer.1.DenseReluDense.wi_0.weight`` <-> ``encoder/block/0/layer/1/
# DenseReluDense/wi_0/kernel`` (transposed); ``shared.weight`` <-> ``shared/embedding``.

def flax_path(hf_key: str) -> tuple[tuple[str, ...], bool]:
    """``(path in the Flax tree, transposed)`` of a PyTorch T5 tensor name."""
    parts = hf_key.split(".")
    if parts[-1] != "weight":
        raise CheckpointError(f"{hf_key}: not a T5 weight name")
    if hf_key == "shared.weight" or hf_key.endswith("relative_attention_bias.weight"):
        return tuple(parts[:-1]) + ("embedding",), False
    if hf_key.endswith("layer_norm.weight"):
        return tuple(parts), False
    return tuple(parts[:-1]) + ("kernel",), True


def hf_key_of_flax(path: tuple[str, ...]) -> tuple[str, bool]:
    """``(PyTorch T5 tensor name, transposed)`` of a path in a Flax T5 tree (the inverse of :func:`flax_path`)."""
    if not path or path[-1] not in ("kernel", "embedding", "weight"):
        raise CheckpointError(f"{'/'.join(path)}: not a Flax T5 parameter (kernel, embedding or weight)")
    return ".".join(path[:-1]) + ".weight", path[-1] == "kernel"


def hf_to_flax_tree(state: dict[str, np.ndarray]) -> dict:
    """The nested Flax T5 parameter tree (kernels ``[in, out]``) of an HF state dict from :func:`params_to_hf`."""
    tree: dict = {}
    for key, x in state.items():
        path, transposed = flax_path(key)
        _set_path(tree, path, np.ascontiguousarray(x.T) if transposed else x)
    return tree
