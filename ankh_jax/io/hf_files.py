"""HuggingFace model directories on disk: ``config.json``, safetensors (single or sharded, with its index) and
``pytorch_model.bin`` files, read into ankh_jax params and written from an HF state dict.

Reading needs no torch for safetensors (``safetensors.safe_open`` into numpy, bfloat16 included);
``pytorch_model.bin`` files are read with ``torch.load(weights_only=True)``. How tensors are named and shaped is
``ankh_jax.io.hf_mapping``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from ankh_jax.io import CheckpointError
from ankh_jax.io.hf_mapping import CONFIG_FILE, config_from_hf, lm_head_scale_of, params_from_hf
from ankh_jax.model.config import T5Config

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"

__all__ = ["CONFIG_FILE", "SAFETENSORS_FILE", "SAFETENSORS_INDEX", "TORCH_FILE", "TORCH_INDEX", "CheckpointError",
           "load_hf_model", "open_weights", "read_hf_config", "save_hf_weights", "weight_files"]


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
        try:
            return handle.get_tensor(name)
        except (SafetensorError, TypeError, ValueError) as err:
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
            names, get = _open_safetensors(path)
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
                            lm_head_scale=lm_head_scale_of(hf_config), source=os.path.join(model_dir, files))
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
