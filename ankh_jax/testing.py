"""Test dummies: tiny random Ankh-shaped models, as params, as an :class:`Encoder`, or written to a directory;
and :func:`call_jitted`, which runs a computation a test compares as one compiled program.

Nothing in the library imports this module; tests, demos and benchmarks do. A random encoder written with
:func:`write_random_encoder` is an ordinary HuggingFace encoder directory, so it goes wherever a model directory
does (``ENCODER=...`` of ``python -m ankh_jax.finetune``, ``--model`` of the commands) and exercises the real
loading path.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from ankh_jax.downstream.encoder_source import Encoder
from ankh_jax.errors import InputError
from ankh_jax.model import EncoderOnly, T5Config, Transformer, params_layout

PRESETS = {"tiny": T5Config.tiny, "base": T5Config.ankh_base, "large": T5Config.ankh_large}

# The decoding tests' model: attention width 2 x 8 = 16 != d_model 32, relative positions beyond the max distance.
DECODING_CFG = T5Config.tiny(d_model=32, d_ff=48, num_heads=2, d_kv=8, num_encoder_layers=2, num_decoder_layers=2,
                             relative_attention_num_buckets=8, relative_attention_max_distance=12)
DECODING_SEQS = ["MKALCLLLLPVLGLLVSSKTLCSMEEAINERIQEVAG", "GSHMSLFDFFKNKG", "WYCHQ"]


def decoding_params(seed: int = 0, eos_boost: float = 0.0) -> dict:
    """Random :data:`DECODING_CFG` params with every parameter perturbed (norm scales too, so no mapping error can
    hide) and the ``</s>`` column of the LM head scaled by ``1 + eos_boost`` (generations end at varied lengths)."""
    x = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(Transformer(DECODING_CFG).init)(jax.random.PRNGKey(seed), x, x)["params"])
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a) + rng.normal(0, 0.2, a.shape).astype(np.float32),
                                    params)
    params["decoder"]["logits_dense"]["kernel"][:, 1] *= 1.0 + eos_boost
    return params


def call_jitted(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` compiled as one program, for tests that compare whole computations.

    Run eagerly, a model dispatches each operation on its own and compiles one small program per operation and
    shape: a tiny Transformer's first forward takes ~4 s on a CPU that way, ~0.9 s compiled whole. Positional
    arguments and keyword arguments whose leaves are all arrays (``rngs``, masks, segment ids) are traced; the
    other keyword arguments (``mutable``, flags, sizes) are fixed."""
    fixed = {k: v for k, v in kwargs.items() if not _all_arrays(v)}
    traced = {k: v for k, v in kwargs.items() if k not in fixed}
    return jax.jit(functools.partial(fn, **fixed))(*args, **traced)


def apply_jitted(module: nn.Module, variables, *args, **kwargs):
    """``module.apply(variables, *args, **kwargs)`` as one compiled program (:func:`call_jitted`)."""
    return call_jitted(module.apply, variables, *args, **kwargs)


def _all_arrays(tree) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return bool(leaves) and all(isinstance(x, (np.ndarray, jax.Array)) for x in leaves)


def random_encoder(preset: str = "tiny", seed: int = 0, layers: int | None = None) -> Encoder:
    """An Ankh-shaped encoder (``preset``: tiny, base or large; ``layers`` overrides its depth) with random
    weights."""
    if preset not in PRESETS:
        raise InputError(f"random encoder preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = PRESETS[preset](**({} if layers is None else {"num_encoder_layers": layers}))
    return Encoder(config, _random_params(config, seed), f"random:{preset}:{seed}")


@functools.lru_cache(maxsize=4)
def _random_params(config: T5Config, seed: int) -> dict:
    """Initialised once per (config, seed) in a process (jax arrays are immutable: sharing them is safe)."""
    tokens = jnp.ones((1, 8), jnp.int32)
    variables = jax.jit(EncoderOnly(config).init)(jax.random.key(seed), tokens)
    return params_layout.encoder_subtree(params_layout.plain_params(variables, config))


def write_random_encoder(directory: str | os.PathLike, preset: str = "tiny", seed: int = 0,
                         layers: int | None = None) -> str:
    """:func:`random_encoder` exported as a HuggingFace ``T5EncoderModel`` directory; returns its path."""
    from ankh_jax.io.hf_export import export

    enc = random_encoder(preset, seed, layers)
    directory = os.fspath(directory)
    export(enc.config, enc.params, directory, encoder_only=True, source=enc.source)
    return directory
