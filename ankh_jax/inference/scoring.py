"""Likelihoods from Ankh's decoder: pseudo-likelihood, variant-effect scores and log-likelihoods of generations.

Every score reads the decoder's distribution over the 25 residue tokens only: the log-softmax of the logits with
every special token (the ids whose piece starts with ``<``: ``<pad>``, ``</s>``, ``<unk>`` and the sentinels)
left out, as Ankh's ``compute_pseudo_likelihood`` does.

* Pseudo-likelihood (Ankh's definition): for each position i of a protein of length L, token i is replaced by
  ``<extra_id_0>``, the decoder reads ``[<pad>(start), <extra_id_0>]``, and its last position gives
  ``log p(residue_i)``; the score is ``exp(mean_i log p(residue_i))``.
* Variant effects (masked marginals): for a mutant ``A23G:K45R`` of a wild type, the mutated positions are masked
  together, each with its own sentinel counted down from ``<extra_id_0>`` (id 143) in position order; the decoder
  reads the pretraining target layout teacher-forced with the wild type, ``[start, s0, wt0, s1, wt1, ..., s_n-1]``,
  and the score is ``sum_k log p_k(mut_k) - log p_k(wt_k)`` (for a single mutant exactly the pseudo-likelihood's
  distribution at that position).

With a task prefix (Ankh3's ``[NLU]``, ``prefix_id``) the encoder reads ``[prefix, residues..., </s>]`` and every
masked position shifts by one, as the upstream likelihood code does; the prefix itself is never scored.

All (protein, masked positions) requests are batched by the length buckets and token budget of
``ankh_jax.data.batching.plan_batches``, one compiled program per (rows, bucket, masked count).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS, batch_rows, plan_batches
from ankh_jax.data.tokenizer import (
    EOS_ID,
    FIRST_RESIDUE_ID,
    RESIDUE_TO_ID,
    RESIDUES,
    AnkhTokenizer,
    sentinel_id,
)
from ankh_jax.errors import InputError
from ankh_jax.model.config import T5Config

RESIDUE_IDS = np.arange(FIRST_RESIDUE_ID, FIRST_RESIDUE_ID + len(RESIDUES))  # the ids whose piece is not <...>
_MUTATION = re.compile(r"([A-Z])(\d+)([A-Z])")


@dataclasses.dataclass(frozen=True)
class MaskedRequest:
    """Protein ``protein`` (an index into the tokenized proteins) with ``positions`` (0-based) masked."""

    protein: int
    positions: tuple[int, ...]


@functools.lru_cache(maxsize=8)
def _masked_log_probs_fn(config: T5Config):
    """Jitted ``fn(params, encoder_ids [r, w], decoder_ids [r, 2n]) -> [r, n, 25]`` residue log-probs."""
    import jax

    from ankh_jax.model.network import Transformer

    model = Transformer(config)

    def run(params, enc, dec):
        logits = model.apply({"params": params}, enc, dec)[:, 1::2]
        return jax.nn.log_softmax(logits[..., FIRST_RESIDUE_ID: FIRST_RESIDUE_ID + len(RESIDUES)], axis=-1)

    return jax.jit(run)


def masked_log_probs(config: T5Config, params, proteins: Sequence[np.ndarray], requests: Sequence[MaskedRequest],
                     *, batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = False) -> list[np.ndarray]:
    """For each request, ``[len(positions), 25]`` float32 residue log-probs at the masked positions.

    ``proteins``: token ids with ``</s>``; ``params`` from :func:`ankh_jax.inference.decoding.prepare_params` for
    ``config``. Requests are grouped by their number of masked positions (the decoder length), then batched by
    encoder length bucket and token budget; short batches are padded with copies of their first row."""
    from ankh_jax.inference.devices import DataParallel

    fn = _masked_log_probs_fn(config)
    parallel = DataParallel.of(params)  # the batches run sharded over the devices params are replicated on
    out: list[np.ndarray | None] = [None] * len(requests)
    by_count: dict[int, list[int]] = {}
    for i, r in enumerate(requests):
        by_count.setdefault(len(r.positions), []).append(i)
    jobs = []
    for n, members in sorted(by_count.items()):
        plan = plan_batches([len(proteins[requests[i].protein]) for i in members], batch_tokens=batch_tokens,
                            row_multiple=parallel.size)
        rows = batch_rows(plan, parallel.size)
        jobs += [(n, width, rows[width], [members[j] for j in idx]) for width, idx in plan]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="score", unit="batch")
    for n, width, n_rows, idx in jobs:
        enc = np.zeros((n_rows, width), np.int32)
        dec = np.zeros((n_rows, 2 * n), np.int32)
        for row in range(n_rows):
            req = requests[idx[min(row, len(idx) - 1)]]
            enc[row], dec[row] = _masked_example(proteins[req.protein], req.positions, width)
        result = parallel.run_rows(fn, params, enc, dec)
        for row, i in enumerate(idx):
            out[i] = result[row]
    return out


def _masked_example(tokens: np.ndarray, positions: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Encoder ids (``positions`` -> sentinels 0, 1, ... in order, padded to ``width``) and the decoder input
    ``[start, s0, wt0, s1, ..., s_n-1]`` teacher-forced with the original residues."""
    enc = np.zeros(width, np.int32)
    enc[: len(tokens)] = tokens
    dec = np.zeros(2 * len(positions), np.int32)
    for k, p in enumerate(sorted(positions)):
        enc[p] = sentinel_id(k)
        dec[2 * k + 1] = sentinel_id(k)
        if 2 * k + 2 < dec.size:
            dec[2 * k + 2] = tokens[p]
    return enc, dec


def tokenize(sequences: Sequence[str], prefix_id: int | None = None) -> list[np.ndarray]:
    """Token ids (``[prefix]`` + residues + ``</s>``) of each sequence; an invalid residue raises naming it."""
    tok = AnkhTokenizer()
    head = np.array([] if prefix_id is None else [prefix_id], np.int32)
    return [np.concatenate([head, tok.encode(s, record=f"#{i}")]) for i, s in enumerate(sequences)]


def pseudo_likelihood(config: T5Config, params, sequences: Sequence[str], *,
                      batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = False,
                      prefix_id: int | None = None) -> np.ndarray:
    """Ankh's pseudo-likelihood of each sequence (float64 ``[n]``); ``params`` as for :func:`masked_log_probs`;
    ``prefix_id``: a task prefix token before the residues (module docstring)."""
    skip = 0 if prefix_id is None else 1
    proteins = tokenize(sequences, prefix_id)
    requests = [MaskedRequest(i, (p,)) for i, t in enumerate(proteins) for p in range(skip, len(t) - 1)]
    log_probs = masked_log_probs(config, params, proteins, requests, batch_tokens=batch_tokens, progress=progress)
    totals = np.zeros(len(proteins))
    for req, lp in zip(requests, log_probs):
        totals[req.protein] += float(lp[0, proteins[req.protein][req.positions[0]] - FIRST_RESIDUE_ID])
    lengths = np.array([len(t) - 1 - skip for t in proteins], dtype=np.float64)
    return np.exp(totals / lengths)


def parse_mutant(mutant: str, wildtype: str, *, where: str = "") -> tuple[tuple[int, str, str], ...]:
    """``'A23G:K45R'`` -> ``((22, 'A', 'G'), (44, 'K', 'R'))`` (0-based, sorted), checked against the wild type.

    Raises ValueError (prefixed with ``where``) for a malformed string, a position outside the protein, a wrong
    wild-type letter, a non-residue letter or a position mutated twice."""
    text = mutant.strip()
    if not text:
        raise InputError(f"{where}empty mutant")
    parts = []
    for part in text.split(":"):
        m = _MUTATION.fullmatch(part.strip())
        if m is None:
            raise InputError(f"{where}malformed mutation {part!r} in {mutant!r} (expected e.g. A23G or A23G:K45R)")
        wt, pos, mut = m.group(1), int(m.group(2)), m.group(3)
        if not 1 <= pos <= len(wildtype):
            raise InputError(f"{where}{part}: position {pos} outside the wild type (1..{len(wildtype)})")
        if wildtype[pos - 1] != wt:
            raise InputError(f"{where}{part}: the wild type has {wildtype[pos - 1]!r} at position {pos}, not {wt!r}")
        if mut not in RESIDUE_TO_ID:
            raise InputError(f"{where}{part}: {mut!r} is not a residue (allowed: {RESIDUES})")
        parts.append((pos - 1, wt, mut))
    positions = [p for p, _, _ in parts]
    if len(set(positions)) != len(positions):
        raise InputError(f"{where}{mutant!r} mutates a position twice")
    return tuple(sorted(parts))


def score_mutations(config: T5Config, params, wildtype: str, mutants: Sequence[str], *,
                    batch_tokens: int = DEFAULT_BATCH_TOKENS, progress: bool = False,
                    prefix_id: int | None = None) -> np.ndarray:
    """Masked-marginal scores ``sum log p(mut) - log p(wt)`` (float64 ``[n]``), in the order of ``mutants``.

    Every mutant is parsed and checked first (an error names its index); mutants that mask the same positions
    share one forward pass."""
    skip = 0 if prefix_id is None else 1
    tokens = tokenize([wildtype], prefix_id)[0]
    wildtype = AnkhTokenizer().decode(tokens[skip:])
    parsed = [parse_mutant(m, wildtype, where=f"mutant #{i}: ") for i, m in enumerate(mutants)]
    position_sets = sorted({tuple(p + skip for p, _, _ in muts) for muts in parsed})
    requests = [MaskedRequest(0, s) for s in position_sets]
    log_probs = dict(zip(position_sets, masked_log_probs(config, params, [tokens], requests,
                                                         batch_tokens=batch_tokens, progress=progress)))
    scores = np.zeros(len(parsed))
    for i, muts in enumerate(parsed):
        lp = log_probs[tuple(p + skip for p, _, _ in muts)]
        scores[i] = sum(float(lp[k, RESIDUE_TO_ID[m] - FIRST_RESIDUE_ID] - lp[k, RESIDUE_TO_ID[w] - FIRST_RESIDUE_ID])
                        for k, (_, w, m) in enumerate(muts))
    return scores


def generated_log_likelihood(config: T5Config, params, encoder_ids: np.ndarray, generated: np.ndarray,
                             lengths: Sequence[int] | None = None) -> np.ndarray:
    """``sum log p(token)`` (full softmax) of each generated row ``[b, n]`` up to and including its ``</s>``
    (or all ``n`` tokens when it has none), or of its first ``lengths[row]`` tokens when given, given encoder ids
    ``[b, l]``; teacher-forced, one decoder pass."""
    import jax
    import jax.numpy as jnp

    from ankh_jax.model.network import shift_right

    generated = np.asarray(generated, np.int32)
    if lengths is None:
        counted = np.cumsum(np.cumsum(generated == EOS_ID, axis=1), axis=1) <= 1  # through the first </s>
    else:
        counted = np.arange(generated.shape[1])[None, :] < np.asarray(lengths)[:, None]
    from ankh_jax.inference.devices import DataParallel

    fn = _teacher_forced_fn(config)
    logits = DataParallel.of(params).run_rows(fn, params, np.asarray(encoder_ids, np.int32),
                                               np.asarray(shift_right(jnp.asarray(generated))))
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    picked = np.take_along_axis(log_probs, generated[..., None], axis=-1)[..., 0]
    return (picked * counted).sum(axis=1)


@functools.lru_cache(maxsize=8)
def _teacher_forced_fn(config: T5Config):
    import jax

    from ankh_jax.model.network import Transformer

    model = Transformer(config)
    return jax.jit(lambda params, enc, dec: model.apply({"params": params}, enc, dec))
