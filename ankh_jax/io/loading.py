"""The one way a model directory becomes ``(config, params)``: :func:`load`.

Two kinds of directory: an ankh_jax training directory (``model_config.json`` and orbax checkpoints, read with
``ankh_jax.io.checkpoints.load_params``: the latest step or ``step``, verified against the fingerprint stored with
it) and a HuggingFace model directory (``config.json`` plus safetensors / ``pytorch_model.bin``, full model or
``T5EncoderModel``, read with ``ankh_jax.io.hf_files``; or ``flax_model.msgpack`` alone, transformers' Flax
weights, read with ``ankh_jax.io.flax_msgpack``). Either way every weight is checked to be finite and the
params are brought, once, into the plain layout the caller asks for (``params_layout.normalize``): unrolled
``layers_{i}`` by default, stacked with ``scan_layers=True``. A scanned training checkpoint loaded with
``scan_layers=True`` is never unrolled on the way. Consumers (the notebook API, ``embed``, ``export_hf``,
``generate``, ``score``, fine-tuning's encoder) use what comes back as it is.
"""

from __future__ import annotations

import os

from ankh_jax.io import CheckpointError
from ankh_jax.io.hf_mapping import CONFIG_FILE as HF_CONFIG_FILE
from ankh_jax.io.hf_mapping import require_finite
from ankh_jax.model.config import T5Config
from ankh_jax.storage.atomic import read_marker
from ankh_jax.storage.paths import as_path, check_reachable, is_remote
from ankh_jax.storage.remote_copy import local_copy

ANKH_JAX_CONFIG_FILE = "model_config.json"  # written by ankh_jax.io.checkpoints into a training directory
# An export to object storage uploads its files one by one (no directory rename there), between two writes of
# this marker: {"complete": false} first, {"complete": true, "files": [...]} last (ankh_jax.io.hf_export).
EXPORT_MARKER = ".ankh_jax_export.json"


def require_committed_export(path: str | os.PathLike) -> None:
    """Refuses a directory an ankh_jax export into is still writing (or died writing): its files may be from two
    exports. A directory without the marker (any HuggingFace model, a local export) is read as it is."""
    marker = read_marker(path, EXPORT_MARKER)
    if marker is not None and not marker.get("complete"):
        raise CheckpointError(f"{os.fspath(path)}: an export into it has not finished ({EXPORT_MARKER} says "
                              "incomplete), so its files may be from two exports; re-run that export")


def model_format(path: str | os.PathLike) -> str:
    """``'ankh_jax'`` (training directory), ``'hf'`` (HuggingFace directory); anything else is an error. ``path``
    may be local or ``gs://``."""
    where = as_path(path)
    path = os.fspath(path)
    check_reachable(path, "model directory")
    if where.exists() and not where.is_dir():
        raise FileNotFoundError(f"{path}: is a file, not a model directory")
    if not where.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if (where / ANKH_JAX_CONFIG_FILE).exists():
        return "ankh_jax"
    if (where / HF_CONFIG_FILE).exists():
        require_committed_export(path)
        return "hf"
    raise FileNotFoundError(f"{path}: neither an ankh_jax training directory ({ANKH_JAX_CONFIG_FILE}) nor a "
                            f"HuggingFace model directory ({HF_CONFIG_FILE})")


def load(path: str | os.PathLike, *, encoder_only: bool = False, step: int | None = None,
         **config_overrides) -> tuple[T5Config, dict]:
    """``(config, params)`` from either kind of directory (see the module docstring).

    ``params`` are plain nested dicts (numpy or jax arrays) in the layout of the returned ``config.scan_layers``:
    unrolled (``layers_{i}``) unless ``scan_layers=True`` is among ``config_overrides``. With ``encoder_only`` only
    the ``token_embedder`` and ``encoder`` subtrees are returned (and, for HF, read). ``step`` picks a checkpoint
    of an ankh_jax directory (default: the latest).
    """
    path = os.fspath(path)
    if model_format(path) == "hf":
        if step is not None:
            raise ValueError(f"{path} is a HuggingFace directory: it has no steps (step={step})")
        if is_remote(path):  # safetensors, torch and the tokenizer read local files: a cached local copy
            path = local_copy(path)
        from ankh_jax.io import flax_msgpack
        from ankh_jax.io.hf_files import load_hf_model

        if flax_msgpack.is_flax_only(path):  # transformers' Flax weights (flax_model.msgpack)
            return flax_msgpack.load_flax_model(path, encoder_only=encoder_only, **config_overrides)
        return load_hf_model(path, encoder_only=encoder_only, **config_overrides)
    from ankh_jax.io.checkpoints import load_params  # the orbax stack only for training dirs
    from ankh_jax.model import params_layout

    config, params = load_params(path, step=step)
    _require_finite_tree(params, path)
    config = config.replace(**{"scan_layers": False, **config_overrides})
    if encoder_only:
        params = params_layout.encoder_subtree(params)  # before the layout: the decoder is never converted
    return config, params_layout.normalize(params, config)


def _require_finite_tree(params, path: str) -> None:
    """Every leaf finite, named by its path in the checkpoint (``encoder/layers_1/mlp/wo/kernel``)."""
    import jax
    import numpy as np

    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        require_finite(np.asarray(leaf), f"{path}: parameter "
                       f"{jax.tree_util.keystr(key_path, simple=True, separator='/')}")
