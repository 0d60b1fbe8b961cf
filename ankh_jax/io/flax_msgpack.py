"""transformers' Flax T5 weights on disk: ``flax_model.msgpack`` next to ``config.json``.

The lab published Flax checkpoints (``ElnaggarLab/ankh-large-encoder``, written by ``FlaxT5EncoderModel``) that
transformers 5 no longer reads. The file is ``flax.serialization.to_bytes`` of the model's parameter tree
(``shared/embedding``, ``encoder/block/<i>/layer/<j>/...``, ``lm_head/kernel``; kernels ``[in, out]``), of a full
model or an encoder only, in any float dtype (bfloat16 included). How those names map to ankh_jax's is
``ankh_jax.io.hf_mapping`` (:func:`~ankh_jax.io.hf_mapping.hf_key_of_flax`); this module only reads and writes the
file. A directory holding PyTorch weights as well is read through them, as transformers does.
"""

from __future__ import annotations

import os

import numpy as np

from ankh_jax.io import CheckpointError
from ankh_jax.io.hf_mapping import (
    CONFIG_FILE,
    config_from_hf,
    hf_key_of_flax,
    hf_to_flax_tree,
    lm_head_scale_of,
    params_from_hf,
)
from ankh_jax.model.config import T5Config

FLAX_FILE = "flax_model.msgpack"
_PYTORCH_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


def is_flax_only(model_dir: str) -> bool:
    """True when ``model_dir`` holds ``flax_model.msgpack`` and no PyTorch weights (which would be preferred)."""
    return (os.path.exists(os.path.join(model_dir, FLAX_FILE))
            and not any(os.path.exists(os.path.join(model_dir, n)) for n in _PYTORCH_WEIGHTS))


def read_flax_tensors(path: str) -> dict[str, np.ndarray]:
    """``{PyTorch T5 tensor name: array [out, in]}`` of a ``flax_model.msgpack`` (dtype as stored)."""
    from flax import serialization

    from ankh_jax.io.hf_files import require_regular_file

    require_regular_file(path, "a weight file")  # a link to /dev/zero would be read forever
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - msgpack's many error types for a damaged or truncated file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {first})") from None
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]  # a whole variables dict rather than its params collection
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: holds a {type(tree).__name__}, not a Flax parameter tree")
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for name, child in node.items():
                walk(child, prefix + (str(name),))
            return
        if not isinstance(node, np.ndarray) or not np.issubdtype(node.dtype, np.floating) and \
                node.dtype.name != "bfloat16":
            raise CheckpointError(f"{path}: {'/'.join(prefix)} is a {type(node).__name__} "
                                  f"{getattr(node, 'dtype', '')}, not a float array")
        key, transposed = hf_key_of_flax(prefix)
        out[key] = node.T if transposed else node

    walk(tree, ())
    return out


def load_flax_model(model_dir: str | os.PathLike, *, encoder_only: bool = False, **config_overrides
                    ) -> tuple[T5Config, dict]:
    """``(config, params)`` from ``config.json`` + ``flax_model.msgpack``; as ``hf_files.load_hf_model``."""
    from ankh_jax.io.hf_files import read_hf_config
    from ankh_jax.model import params_layout

    model_dir = os.fspath(model_dir)
    hf_config = read_hf_config(model_dir)
    config = config_from_hf(hf_config, source=os.path.join(model_dir, CONFIG_FILE), **config_overrides)
    path = os.path.join(model_dir, FLAX_FILE)
    tensors = read_flax_tensors(path)
    params = params_from_hf(tensors.__getitem__, set(tensors), config, encoder_only=encoder_only,
                            lm_head_scale=lm_head_scale_of(hf_config), source=path,
                            config_source=os.path.join(model_dir, CONFIG_FILE))
    return config, params_layout.normalize(params, config)


def save_flax_weights(state: dict[str, np.ndarray], output_dir: str) -> list[str]:
    """Writes an HF state dict (``hf_mapping.params_to_hf``) as ``flax_model.msgpack``, the tree transformers
    4.x's ``FlaxT5ForConditionalGeneration`` / ``FlaxT5EncoderModel`` read; returns the path written."""
    from flax import serialization

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FLAX_FILE)
    with open(path, "wb") as f:
        f.write(serialization.msgpack_serialize(hf_to_flax_tree(state)))
    return [path]
