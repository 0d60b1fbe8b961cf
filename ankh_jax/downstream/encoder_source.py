"""The encoder a downstream run starts from: ``ENCODER`` (a gin macro of the runner), a model directory.

The directory is a HuggingFace Ankh directory or an ankh_jax training directory, read encoder-only by
``ankh_jax.io.loading.load`` (plain, unrolled params). Tests, demos and benchmarks that need an encoder without
released weights write a random one with ``ankh_jax.testing.write_random_encoder`` and pass its directory.
"""

from __future__ import annotations

import dataclasses
import functools

from ankh_jax.model import EncoderOnly, T5Config


@dataclasses.dataclass
class Encoder:
    config: T5Config
    params: dict          # {"token_embedder": ..., "encoder": ...}, plain, in config.scan_layers' layout
    source: str           # what ENCODER said (for messages; the weights identify the encoder: fingerprint)

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @functools.cached_property
    def fingerprint(self) -> str:
        """``weights_fingerprint`` of the encoder weights as an unrolled tree: equal exactly when the weights are,
        whatever path or layout they were loaded from."""
        from ankh_jax.model import params_layout
        from ankh_jax.model.fingerprint import weights_fingerprint

        return weights_fingerprint(params_layout.unrolled_on_host(self.params, self.config))

    def module(self) -> EncoderOnly:
        return EncoderOnly(self.config)


def load_encoder(spec: str) -> Encoder:
    """The encoder of the model directory ``spec`` (see the module docstring)."""
    from ankh_jax.io.loading import load

    spec = str(spec)
    config, params = load(spec, encoder_only=True)
    return Encoder(config, params, spec)
