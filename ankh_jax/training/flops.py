"""Model FLOPs of an Ankh (T5 encoder-decoder) training step, and the peak FLOP/s used for MFU.

Model FLOPs count the matmuls of the model as written (no remat recomputation), 2 FLOPs per multiply-add, on the
padded shapes. With batch B, encoder length Le, decoder length Ld, d = d_model, a = num_heads * d_kv (attention
width), f = d_ff, V = vocab, Ne / Nd encoder / decoder layers, one forward pass costs:

    encoder, per layer:  B*Le * (2*4*d*a        q, k, v, o projections
                                 + 2*3*d*f      gated-GELU MLP (wi_0, wi_1, wo)
                                 + 2*2*Le*a)    scores q.k and the weighted sum of v (bidirectional)
    decoder, per layer:  B*Ld * (2*4*d*a        self-attention projections
                                 + 2*2*d*a      cross-attention q and o
                                 + 2*3*d*f      MLP
                                 + 2*2*Ld*a/2   causal self-attention (half of the score matrix is needed)
                                 + 2*2*Le*a)    cross-attention over the encoder
                       + B*Le * 2*2*d*a         cross-attention k, v projections of the encoder output
    LM head:             B*Ld * 2*d*V

and a training step is 3x the forward (the backward pass costs two matmuls per forward matmul).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak per chip, FLOP/s (vendor figures).
_PEAK_BY_DEVICE_KIND = {
    "TPU v2": 45e12 / 2, "TPU v3": 123e12 / 2, "TPU v4": 275e12, "TPU v4 lite": 137.5e12,
    "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
    "TPU v6e": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100-SXM4-40GB": 312e12,
}


def forward_flops(config, batch: int, enc_len: int, dec_len: int) -> float:
    d, a, f, v = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    enc_layer = 2 * 4 * d * a + 2 * 3 * d * f + 2 * 2 * enc_len * a
    dec_layer = 2 * 4 * d * a + 2 * 2 * d * a + 2 * 3 * d * f + 2 * 2 * dec_len * a / 2 + 2 * 2 * enc_len * a
    total = batch * enc_len * config.num_encoder_layers * enc_layer
    total += batch * dec_len * config.num_decoder_layers * dec_layer
    total += batch * enc_len * config.num_decoder_layers * 2 * 2 * d * a
    total += batch * dec_len * 2 * d * v
    return float(total)


def train_step_flops(config, batch: int, enc_len: int, dec_len: int) -> float:
    return 3.0 * forward_flops(config, batch, enc_len, dec_len)


def measure_matmul_peak(size: int = 2048, repeats: int = 5, device=None) -> float:
    """FLOP/s of a float32 ``size x size`` matmul on one device (best of ``repeats``)."""
    device = device or jax.devices()[0]
    x = jax.device_put(jnp.ones((size, size), jnp.float32), device)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size ** 3 / best


def peak_flops_per_device(device=None, override: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number comes from)."""
    if override:
        return float(override), "configured"
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in _PEAK_BY_DEVICE_KIND.items():
        if kind == name:
            return peak, f"{kind} bf16 spec"
    for name, peak in _PEAK_BY_DEVICE_KIND.items():
        if kind.startswith(name):
            return peak, f"{kind} ~ {name} bf16 spec"
    size = 1024 if device.platform == "cpu" else 4096
    return measure_matmul_peak(size, device=device), f"measured float32 {size}^2 matmul on {kind or device.platform}"
