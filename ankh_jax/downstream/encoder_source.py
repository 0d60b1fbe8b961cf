"""The encoder a downstream run starts from: an HF / ankh_jax model directory, or a random one for testing.

``ENCODER`` (a gin macro of the runner) is either a path, loaded with ``ankh_jax.load_model`` (a HuggingFace Ankh
directory or an ankh_jax training directory), or ``random:PRESET[:SEED[:LAYERS]]`` with PRESET one of ``tiny``,
``base``, ``large`` (a *testing aid*: an Ankh-shaped encoder with random weights, so tests, demos and benchmarks
run without weights; LAYERS overrides the encoder depth).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ankh_jax.model import EncoderOnly, T5Config

PRESETS = {"tiny": T5Config.tiny, "base": T5Config.ankh_base, "large": T5Config.ankh_large}


@dataclasses.dataclass
class Encoder:
    config: T5Config
    params: dict          # {"token_embedder": ..., "encoder": ...}, unboxed
    source: str           # what ENCODER said (for messages; the weights identify the encoder: fingerprint)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @functools.cached_property
    def fingerprint(self) -> str:
        """``weights_fingerprint`` of the plain, unrolled encoder weights: equal exactly when the weights are,
        whatever path or layout they were loaded from."""
        from ankh_jax.io.hf import plain_params
        from ankh_jax.model.fingerprint import weights_fingerprint

        return weights_fingerprint(plain_params(self.params, self.config))

    def module(self) -> EncoderOnly:
        return EncoderOnly(self.config)


def _encoder_subtree(params) -> dict:
    params = nn.unbox(params)
    if "params" in params and "encoder" not in params:
        params = params["params"]
    missing = [k for k in ("token_embedder", "encoder") if k not in params]
    if missing:
        raise ValueError(f"the model's parameters have no {missing} (top-level keys: {sorted(params)})")
    return {"token_embedder": params["token_embedder"], "encoder": params["encoder"]}


def random_encoder(preset: str = "tiny", seed: int = 0, **overrides) -> Encoder:
    """An Ankh-shaped encoder with random weights (tests, demos, benchmarks)."""
    if preset not in PRESETS:
        raise ValueError(f"random encoder preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = PRESETS[preset](**overrides)
    return Encoder(config, _random_params(config, seed), f"random:{preset}:{seed}")


@functools.lru_cache(maxsize=4)
def _random_params(config: T5Config, seed: int) -> dict:
    """Initialised once per (config, seed) in a process (jax arrays are immutable: sharing them is safe)."""
    tokens = jnp.ones((1, 8), jnp.int32)
    return _encoder_subtree(jax.jit(EncoderOnly(config).init)(jax.random.key(seed), tokens)["params"])


def load_encoder(spec: str) -> Encoder:
    """``random:PRESET[:SEED[:LAYERS]]`` or a model directory (see the module docstring)."""
    spec = str(spec)
    if spec.startswith("random:"):
        parts = spec.split(":")
        try:
            seed = int(parts[2]) if len(parts) > 2 else 0
            overrides = {"num_encoder_layers": int(parts[3])} if len(parts) > 3 else {}
        except ValueError:
            raise ValueError(f"ENCODER={spec!r}: expected random:PRESET[:SEED[:LAYERS]]") from None
        return dataclasses.replace(random_encoder(parts[1], seed, **overrides), source=spec)
    import ankh_jax

    loader = getattr(ankh_jax, "load_model", None)
    if loader is None:
        raise RuntimeError("ankh_jax.load_model is not available in this installation; cannot load " + spec)
    model = loader(spec)
    return Encoder(model.config, _encoder_subtree(model.params), spec)
