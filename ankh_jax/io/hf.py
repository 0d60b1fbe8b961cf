"""HuggingFace T5 <-> ankh_jax: the parameter mapping, ``config.json``, and reading / writing checkpoint files.

HF's PyTorch T5 stores every projection as a ``Linear`` weight ``[out, in]`` with the heads flattened; ankh_jax
keeps kernels ``[in, out]`` with an explicit head axis. The mapping is a pure reshape/transpose, so a round trip is
bit-exact. Reading needs no torch for safetensors (a small reader of our own that also understands bfloat16);
``pytorch_model.bin`` files are read with ``torch.load(weights_only=True)``.

Tied heads: transformers 4 ties ``lm_head`` to ``shared`` and multiplies the decoder output by ``d_model**-0.5``
unless ``config.json`` says ``"tie_word_embeddings": false`` (Ankh's released models say so). transformers 5 always
ties on a fresh model and records the rescale as ``scale_decoder_outputs``. ankh_jax has an untied head and no
rescale, so on import a missing ``lm_head.weight`` is taken from ``shared.weight`` and any rescale is folded into
the head's kernel. Export always writes an untied head with ``"tie_word_embeddings": false``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator

import numpy as np

from ankh_jax.io import CheckpointError
from ankh_jax.model.config import T5Config

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

# Kinds of tensor: how an ankh_jax array becomes HF's and back.
_VECTOR, _EMBEDDING, _LINEAR, _QKV, _OUT, _RELPOS = "vector", "embedding", "linear", "qkv", "out", "relpos"
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


def plain_params(params, config: T5Config) -> dict:
    """Unboxed, unrolled (``layers_{i}``) params as nested dicts, whatever form they came in."""
    from flax import linen as nn  # flax only when converting model params

    from ankh_jax.model import params_layout

    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    params = nn.unbox(params)
    params = _to_plain_dict(params)
    if params_layout.is_scanned(params):
        params = params_layout.unstack_layers(params, config)
    return params


def _to_plain_dict(tree):
    if hasattr(tree, "items"):
        return {k: _to_plain_dict(v) for k, v in tree.items()}
    return tree


def params_to_hf(params, config: T5Config, *, encoder_only: bool = False) -> dict[str, np.ndarray]:
    """HF state dict (float32 numpy, ``[out, in]``) from ankh_jax params (boxed or not, scanned or not)."""
    params = plain_params(params, config)
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
                   encoder_only: bool = False, lm_head_scale: float = 1.0, source: str = "checkpoint") -> dict:
    """ankh_jax params (float32 numpy, unrolled) from HF tensors.

    ``get_tensor(key)`` returns one tensor (lazily, so a 7 GB checkpoint is converted one tensor at a time);
    ``keys`` are all the tensor names the checkpoint holds. Every expected tensor must be there with the shape the
    config implies; anything unexpected is an error too. The decoder is read unless ``encoder_only`` or the
    checkpoint holds none (a ``T5EncoderModel``).
    """
    has_decoder = any(k.startswith("decoder.") for k in keys)
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
    """A :class:`T5Config` from an HF ``config.json`` dict; T5 variants ankh_jax cannot run are errors."""
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
    except ValueError as e:
        raise CheckpointError(f"{source}: {e}") from e


def read_hf_config(model_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{model_dir}: no {CONFIG_FILE}; not a HuggingFace model directory") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


# ----------------------------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------------------------

def _safetensors_dtypes() -> dict:
    import ml_dtypes  # ships with jax

    return {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
            "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    """A memory-mapped ``.safetensors`` file: ``keys()`` and ``get(name)`` (numpy, bfloat16 included)."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8:
                raise CheckpointError(f"{path}: header length {n} exceeds the file size {size}; truncated?")
            try:
                self.header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None
        if not isinstance(self.header, dict) or not all(isinstance(v, dict) for v in self.header.values()):
            raise CheckpointError(f"{path}: the safetensors header is not a table of tensors")
        self.header.pop("__metadata__", None)
        self._offset = 8 + n
        self._data_size = size - self._offset
        self._dtypes = _safetensors_dtypes()

    def keys(self) -> list[str]:
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = self._dtypes.get(str(info.get("dtype")))
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {info.get('dtype')}")
        try:
            start, end = (int(o) for o in info["data_offsets"])
            shape = [int(n) for n in info["shape"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path}: tensor {name} has no valid data_offsets / shape in the header") \
                from None
        if end > self._data_size:
            raise CheckpointError(f"{self.path}: tensor {name} ends past the end of the file; truncated?")
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=0) < 0 or not 0 <= start <= end or end - start != count * np.dtype(dtype).itemsize:
            raise CheckpointError(f"{self.path}: tensor {name}: data_offsets [{start}, {end}] hold {end - start} "
                                  f"bytes, its shape {shape} and dtype {info['dtype']} need "
                                  f"{count * np.dtype(dtype).itemsize}")
        arr = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._offset + start, shape=(end - start,))
        return arr.view(dtype).reshape(shape)


def _torch_state_dict(path: str) -> dict:
    try:
        import torch  # only pytorch_model.bin needs it
    except ImportError:
        raise CheckpointError(f"{path}: reading pytorch_model.bin needs torch (pip install 'ankh-jax[hf]'), "
                              "or convert the checkpoint to safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a refused pickle (UnpicklingError), a damaged zip (RuntimeError), ...
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch checkpoint ({type(err).__name__}: "
                              f"{first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a state dict")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}


def weight_files(model_dir: str) -> list[str]:
    """The checkpoint's weight files, in the order HF prefers: safetensors (sharded or not), then torch."""
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        if os.path.exists(os.path.join(model_dir, single)):
            return [os.path.join(model_dir, single)]
        index_path = os.path.join(model_dir, index)
        if os.path.exists(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path}: no weight_map")
            files = sorted(set(weight_map.values()))
            for name in files:
                if not os.path.exists(os.path.join(model_dir, name)):
                    raise CheckpointError(f"{index_path}: shard {name} is missing")
            return [os.path.join(model_dir, name) for name in files]
    raise CheckpointError(f"{model_dir}: no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} or "
                          f"{TORCH_INDEX})")


def open_weights(model_dir: str) -> tuple[dict[str, Callable[[], np.ndarray]], str]:
    """``{tensor name: loader}`` over all weight files of an HF directory, and a description for errors."""
    files = weight_files(model_dir)
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for path in files:
        if path.endswith(".safetensors"):
            st = SafetensorsFile(path)
            names = st.keys()
            get = st.get
        else:
            state = _torch_state_dict(path)
            names, get = list(state), state.__getitem__
        for name in names:
            if name in loaders:
                raise CheckpointError(f"{path}: tensor {name} appears in two weight files")
            loaders[name] = (lambda get=get, name=name: get(name))
    return loaders, ", ".join(os.path.basename(p) for p in files)


def load_hf_model(model_dir: str | os.PathLike, *, encoder_only: bool = False, **config_overrides
                  ) -> tuple[T5Config, dict]:
    """``(config, params)`` from a HuggingFace T5 directory (full model or ``T5EncoderModel``).

    The params are plain float32 numpy in ankh_jax's layout (stacked when ``scan_layers=True`` is among the
    overrides); they hold a ``decoder`` subtree iff the checkpoint has one and ``encoder_only`` is false.
    """
    model_dir = os.fspath(model_dir)
    hf_config = read_hf_config(model_dir)
    config = config_from_hf(hf_config, source=os.path.join(model_dir, CONFIG_FILE), **config_overrides)
    loaders, files = open_weights(model_dir)
    params = params_from_hf(lambda k: loaders[k](), set(loaders), config, encoder_only=encoder_only,
                            lm_head_scale=lm_head_scale_of(hf_config), source=os.path.join(model_dir, files))
    if config.scan_layers:
        from ankh_jax.model import params_layout

        params = params_layout.stack_layers(params, config)
    return config, params


def _shards(state: dict[str, np.ndarray], max_bytes: int | None) -> Iterator[dict[str, np.ndarray]]:
    shard: dict[str, np.ndarray] = {}
    size = 0
    for k, v in state.items():
        if shard and max_bytes is not None and size + v.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[k] = v
        size += v.nbytes
    if shard:
        yield shard


def save_hf_weights(state: dict[str, np.ndarray], output_dir: str, *, max_shard_bytes: int | None = None
                    ) -> list[str]:
    """``model.safetensors`` (or shards plus ``model.safetensors.index.json`` above ``max_shard_bytes``); returns
    the paths written."""
    from safetensors.numpy import save_file

    os.makedirs(output_dir, exist_ok=True)
    shards = list(_shards(state, max_shard_bytes))
    if len(shards) == 1:
        path = os.path.join(output_dir, SAFETENSORS_FILE)
        save_file(shards[0], path, metadata={"format": "pt"})
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(output_dir, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        paths.append(os.path.join(output_dir, name))
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))}, "weight_map": weight_map}
    with open(os.path.join(output_dir, SAFETENSORS_INDEX), "w") as f:
        json.dump(index, f, indent=1)
    return paths + [os.path.join(output_dir, SAFETENSORS_INDEX)]
