"""Ankh's T5 in Flax: configuration, layers, networks and parameter layouts."""

from ankh_jax.model.config import T5Config
from ankh_jax.model.network import EncoderOnly, Transformer, shift_right

__all__ = ["EncoderOnly", "T5Config", "Transformer", "shift_right"]
