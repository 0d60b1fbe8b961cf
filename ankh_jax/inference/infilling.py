"""Infilling: mask residues with sentinels, let the decoder answer, read the answer back into a protein.

Ankh was pretrained with 1-gram masking, so every masked position gets its own sentinel (``<extra_id_0>`` for
the first masked position, counting down from id 143) and the decoder answers ``<s0> r0 <s1> r1 ... </s>``, one
residue per sentinel: a filled protein always has the parent's length, position by position. A span ``10-14`` in a
mask is shorthand for its five positions.

A decoder answer that does not have that exact form is *malformed* and is never turned into a protein: a missing,
repeated or out-of-order sentinel, a special or sentinel token where a residue belongs, or more or less than one
residue after a sentinel. :class:`InfillSample` then carries the reason in ``error`` and no ``sequence``; callers
count these (``python -m ankh_jax.generate`` reports them). What follows the last expected answer is ignored: a
small model often goes on with ``<extra_id_n>`` (a sentinel the input does not have) instead of ``</s>``, which
leaves every masked position answered exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS, batch_rows, plan_batches
from ankh_jax.data.tokenizer import FIRST_RESIDUE_ID, ID_TO_TOKEN, NUM_SENTINELS, RESIDUES, sentinel_id
from ankh_jax.errors import InputError
from ankh_jax.inference import decoding, scoring
from ankh_jax.inference.devices import DataParallel
from ankh_jax.model.config import T5Config
from ankh_jax.parsing import try_int


@dataclasses.dataclass(frozen=True)
class InfillSample:
    parent: int                     # index of the input sequence
    sample: int                     # 1-based sample number
    masked: tuple[int, ...]         # 0-based masked positions
    sequence: str | None            # the filled protein; None when the answer was malformed
    changed: tuple[str, ...]        # e.g. ("A10G",), 1-based positions whose residue changed
    log_likelihood: float           # sum log p of the answer's 2 x masked tokens (sentinels and residues)
    error: str | None = None        # why the answer is malformed


def parse_mask_spec(spec: str, length: int) -> tuple[int, ...]:
    """``'10-14,30'`` (1-based positions and inclusive spans) -> sorted 0-based positions inside ``length``."""
    positions: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        a, b = try_int(lo), try_int(hi) if sep else try_int(lo)
        if a is None or b is None:
            raise InputError(f"mask {spec!r}: {part!r} is neither a position (30) nor a span (10-14)")
        if not 1 <= a <= b:
            raise InputError(f"mask {spec!r}: {part!r} is not a valid 1-based position or increasing span")
        if b > length:
            raise InputError(f"mask {spec!r}: position {b} is past the end of the protein (length {length})")
        positions.update(range(a - 1, b))
    return check_positions(sorted(positions), length)


def check_positions(positions: Sequence[int], length: int) -> tuple[int, ...]:
    """Sorted unique 0-based positions; at least one, at most the 116 sentinels, all inside the protein."""
    out = tuple(sorted({int(p) for p in positions}))
    if not out:
        raise InputError("no position to mask")
    if out[0] < 0 or out[-1] >= length:
        raise InputError(f"masked positions must lie in 1..{length} (1-based)")
    if len(out) > NUM_SENTINELS:
        raise InputError(f"{len(out)} masked positions; Ankh has {NUM_SENTINELS} sentinels, one per position")
    return out


def random_positions(length: int, fraction: float, rng: np.random.Generator) -> tuple[int, ...]:
    """``round(fraction * length)`` (at least 1, at most 116) distinct positions, sorted."""
    n = min(max(1, round(fraction * length)), length, NUM_SENTINELS)
    return tuple(sorted(int(p) for p in rng.choice(length, size=n, replace=False)))


def read_answer(generated: Sequence[int], parent: str, positions: Sequence[int]) -> tuple[str | None, str | None]:
    """``(filled sequence, None)`` or ``(None, reason)`` for one decoder answer (ids after the start token)."""
    tokens = [int(t) for t in generated]
    seq = list(parent)
    for k, pos in enumerate(positions):
        got = tokens[2 * k: 2 * k + 2]
        if len(got) < 2:
            return None, f"the answer stops before sentinel {k}"
        if got[0] != sentinel_id(k):
            return None, f"expected <extra_id_{k}> at answer token {2 * k + 1}, got {ID_TO_TOKEN[got[0]]}"
        if not FIRST_RESIDUE_ID <= got[1] < FIRST_RESIDUE_ID + len(RESIDUES):
            return None, f"expected a residue after <extra_id_{k}>, got {ID_TO_TOKEN[got[1]]}"
        seq[pos] = ID_TO_TOKEN[got[1]]
    return "".join(seq), None


def masked_tokens(tokens: np.ndarray, positions: Sequence[int]) -> np.ndarray:
    out = np.array(tokens, np.int32)
    for k, p in enumerate(positions):
        out[p] = sentinel_id(k)
    return out


def _round_up(n: int, multiple: int = 8) -> int:
    return -(-n // multiple) * multiple


@functools.lru_cache(maxsize=4)
def _config_for(config: T5Config) -> T5Config:
    return decoding.decoding_config(config, config.dtype)


def infill(config: T5Config, params, sequences: Sequence[str], masks: Sequence[Sequence[Sequence[int]]], *,
           strategy: str = "sample", num_beams: int = 4, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = False,
           prefix_id: int | None = None) -> list[InfillSample]:
    """Fills ``masks[i][s]`` (0-based positions) of ``sequences[i]`` for every sample ``s``; results in input
    order (sequence, then sample). ``params`` from :func:`ankh_jax.inference.decoding.prepare_params` for ``config``.

    Requests are batched by ``plan_batches``; ``max_new_tokens`` of a batch is ``2 * masked + 1`` of its largest
    mask, rounded up to a multiple of 8 (fewer compiled programs). Batch ``j`` samples with ``seed + j``.
    ``prefix_id``: a task prefix token put before the residues (Ankh3's ``[S2S]``); positions stay residue
    positions."""
    config = _config_for(config)
    decoding.check_settings(strategy=strategy, max_new_tokens=1, num_beams=num_beams, temperature=temperature,
                            top_k=top_k, top_p=top_p)
    skip = 0 if prefix_id is None else 1
    proteins = scoring.tokenize(sequences, prefix_id)
    requests = [(i, s, check_positions(mask, len(proteins[i]) - 1 - skip))
                for i, sample_masks in enumerate(masks) for s, mask in enumerate(sample_masks)]
    devices = DataParallel.of(params).size  # batches of a multiple of the devices params are replicated on
    plan = plan_batches([len(proteins[i]) for i, _, _ in requests], batch_tokens=batch_tokens, row_multiple=devices)
    rows = batch_rows(plan, devices)
    results: list[InfillSample | None] = [None] * len(requests)
    batches = enumerate(plan)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=len(plan), desc="infill", unit="batch")
    for j, (width, members) in batches:
        n_rows = rows[width]
        enc = np.zeros((n_rows, width), np.int32)
        for r in range(n_rows):
            i, _, pos = requests[members[min(r, len(members) - 1)]]
            enc[r, : len(proteins[i])] = masked_tokens(proteins[i], [p + skip for p in pos])
        budget = _round_up(2 * max(len(requests[m][2]) for m in members) + 1)
        gen = decoding.generate(config, params, enc, max_new_tokens=budget, strategy=strategy,
                                num_beams=num_beams, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed + j, prepared=True)
        answer_lengths = [2 * len(requests[members[min(r, len(members) - 1)]][2]) for r in range(n_rows)]
        loglik = scoring.generated_log_likelihood(config, params, enc, gen, answer_lengths)
        for r, m in enumerate(members):
            i, s, pos = requests[m]
            parent = sequences_clean(proteins[i][skip:])
            filled, error = read_answer(gen[r], parent, pos)
            changed = () if filled is None else tuple(
                f"{parent[p]}{p + 1}{filled[p]}" for p in pos if filled[p] != parent[p])
            results[m] = InfillSample(i, s + 1, pos, filled, changed, float(loglik[r]), error)
    return results


def sequences_clean(tokens: np.ndarray) -> str:
    """The residues of a token array (without ``</s>``)."""
    return "".join(ID_TO_TOKEN[int(t)] for t in tokens[:-1])
