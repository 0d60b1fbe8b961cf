"""HuggingFace model directories on disk: ``config.json``, safetensors (single or sharded, with its index) and
``pytorch_model.bin`` files, read into ankh_jax params and written from an HF state dict.

Reading needs no torch for safetensors (``safetensors.safe_open`` into numpy, bfloat16 included);
``pytorch_model.bin`` files are read with ``torch.load(weights_only=True)``. How tensors are named and shaped is
``ankh_jax.io.hf_mapping``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterator

import numpy as np

from ankh_jax.io import CheckpointError
from ankh_jax.io.hf_mapping import CONFIG_FILE, config_from_hf, lm_head_scale_of, params_from_hf
from ankh_jax.model.config import T5Config
from ankh_jax.storage.outputs import honour_umask

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
# config.json and the indexes: a large model's index is ~100 kB; anything near this is not a model's JSON.
MAX_JSON_BYTES = 16 * 2**20

__all__ = ["CONFIG_FILE", "SAFETENSORS_FILE", "SAFETENSORS_INDEX", "TORCH_FILE", "TORCH_INDEX", "CheckpointError",
           "load_hf_model", "open_weights", "read_hf_config", "save_hf_weights", "weight_files"]


def read_hf_config(model_dir: str | os.PathLike) -> dict:
    path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
    if not os.path.lexists(path):
        raise CheckpointError(f"{model_dir}: no {CONFIG_FILE}; not a HuggingFace model directory")
    config = read_model_json(path)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(config).__name__}, not an object of T5 settings")
    return config


def require_regular_file(path: str, what: str) -> os.stat_result:
    """``os.stat`` of ``path`` (through symlinks: HF caches link every file to a blob), which must be a regular
    file: a device (``/dev/zero``), FIFO or directory is refused before it is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} does not exist (a dangling link?)") from None
    except OSError as err:
        raise CheckpointError(f"{path}: {what} cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: {what} is not a regular file (a device, FIFO or directory); refusing to "
                              "read it")
    return st


def read_model_json(path: str) -> object:
    """A JSON file of a model directory (``config.json``, an index): a regular file of at most
    :data:`MAX_JSON_BYTES`, parsed; anything else is a :class:`CheckpointError` naming the file."""
    st = require_regular_file(path, "a model JSON file")
    if st.st_size > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: {st.st_size} bytes; a model's JSON file is at most {MAX_JSON_BYTES} bytes")
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: more than {MAX_JSON_BYTES} bytes; a model's JSON file is not that large")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: JSON nested too deeply to be a model file") from None


# ----------------------------------------------------------------------------------------------------------------
# Weight files
# ----------------------------------------------------------------------------------------------------------------

# The safetensors dtypes that safe_open(framework="np") reads (bfloat16 through ml_dtypes); whether a model may
# hold them (floats only) is checked after reading, with the model's own message.
NUMPY_SAFETENSORS_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16",
                                      "F32", "F64"})


def _open_safetensors(path: str) -> tuple[list[str], Callable[[str], np.ndarray]]:
    """The tensor names of a ``.safetensors`` file and a reader of one tensor as numpy (memory-mapped by
    ``safetensors.safe_open``; bfloat16 included: importing ``ml_dtypes`` gives numpy the ``bfloat16`` dtype that
    safetensors >= 0.4.1 asks for). A damaged file is a :class:`CheckpointError` naming it."""
    import ml_dtypes  # noqa: F401 - registers numpy's bfloat16 (ships with jax)
    from safetensors import SafetensorError, safe_open

    def damaged(err: Exception) -> CheckpointError:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return CheckpointError(f"{path}: not a readable safetensors file ({reason}); truncated or damaged?")

    try:
        handle = safe_open(path, framework="np")
        names = list(handle.keys())
    except SafetensorError as err:
        raise damaged(err) from None

    def get(name: str) -> np.ndarray:
        dtype = handle.get_slice(name).get_dtype()
        if dtype not in NUMPY_SAFETENSORS_DTYPES:  # safetensors would fail inside numpy (float8: AttributeError)
            raise CheckpointError(f"{path}: tensor {name} is stored as {dtype}, which numpy cannot read")
        try:
            return handle.get_tensor(name)
        except SafetensorError as err:
            raise CheckpointError(f"{path}: tensor {name} is unreadable ({err})") from None

    return names, get


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


def _index_shards(model_dir: str, index_path: str) -> list[str]:
    """The weight files an index names: each a relative name inside ``model_dir`` (no absolute path, no ``..``
    out of it) naming a regular file; errors name the index and the entry."""
    index = read_model_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: no weight_map (an object of tensor name -> weight file)")
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"{index_path}: weight_map entry {tensor!r} is {name!r}, not a file name")
        parts = name.replace("\\", "/").split("/")
        if os.path.isabs(name) or ".." in parts or "\0" in name:
            raise CheckpointError(f"{index_path}: weight_map entry {tensor!r} names {name!r}, outside the model "
                                  "directory; an index names files inside it")
    paths = [os.path.join(model_dir, name) for name in sorted(set(weight_map.values()))]
    for path in paths:
        if not os.path.lexists(path):
            raise CheckpointError(f"{index_path}: shard {os.path.relpath(path, model_dir)} is missing")
        require_regular_file(path, "a weight file named by the index")
    return paths


def weight_files(model_dir: str) -> list[str]:
    """The checkpoint's weight files, in the order HF prefers: safetensors (sharded or not), then torch. Each is a
    regular file (a symlink to one, as in the HF cache, is fine) inside ``model_dir``."""
    for single, index in ((SAFETENSORS_FILE, SAFETENSORS_INDEX), (TORCH_FILE, TORCH_INDEX)):
        single_path = os.path.join(model_dir, single)
        if os.path.lexists(single_path):
            require_regular_file(single_path, "a weight file")
            return [single_path]
        index_path = os.path.join(model_dir, index)
        if os.path.lexists(index_path):
            return _index_shards(model_dir, index_path)
    raise CheckpointError(f"{model_dir}: no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {TORCH_FILE} or "
                          f"{TORCH_INDEX})")


def open_weights(model_dir: str) -> tuple[dict[str, Callable[[], np.ndarray]], str]:
    """``{tensor name: loader}`` over all weight files of an HF directory, and a description for errors."""
    files = weight_files(model_dir)
    loaders: dict[str, Callable[[], np.ndarray]] = {}
    for path in files:
        if path.endswith(".safetensors"):
            names, get = _open_safetensors(path)
        else:
            state = _torch_state_dict(path)
            names, get = list(state), state.__getitem__
        for name in names:
            if name in loaders:
                raise CheckpointError(f"{path}: tensor {name} appears in two weight files")
            loaders[name] = (lambda get=get, name=name: get(name))
    if len(files) == 1 and os.path.basename(files[0]) in (SAFETENSORS_FILE, TORCH_FILE):
        return loaders, os.path.basename(files[0])
    index = SAFETENSORS_INDEX if files[0].endswith(".safetensors") else TORCH_INDEX
    return loaders, f"{index} ({len(files)} shards)"


def load_hf_model(model_dir: str | os.PathLike, *, encoder_only: bool = False, **config_overrides
                  ) -> tuple[T5Config, dict]:
    """``(config, params)`` from a HuggingFace T5 directory (full model or ``T5EncoderModel``).

    The params are plain float32 numpy in the layout of ``config.scan_layers`` (stacked when ``scan_layers=True``
    is among the overrides, converted once by ``params_layout.normalize``); they hold a ``decoder`` subtree iff
    the checkpoint has one and ``encoder_only`` is false.
    """
    from ankh_jax.model import params_layout

    model_dir = os.fspath(model_dir)
    hf_config = read_hf_config(model_dir)
    config = config_from_hf(hf_config, source=os.path.join(model_dir, CONFIG_FILE), **config_overrides)
    loaders, files = open_weights(model_dir)
    params = params_from_hf(lambda k: loaders[k](), set(loaders), config, encoder_only=encoder_only,
                            lm_head_scale=lm_head_scale_of(hf_config), source=os.path.join(model_dir, files),
                            config_source=os.path.join(model_dir, CONFIG_FILE))
    return config, params_layout.normalize(params, config)


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
        honour_umask(path)  # safetensors creates its files 0600
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(output_dir, name), metadata={"format": "pt"})
        honour_umask(os.path.join(output_dir, name))
        weight_map.update({k: name for k in shard})
        paths.append(os.path.join(output_dir, name))
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))}, "weight_map": weight_map}
    with open(os.path.join(output_dir, SAFETENSORS_INDEX), "w") as f:
        json.dump(index, f, indent=1)
    return paths + [os.path.join(output_dir, SAFETENSORS_INDEX)]
