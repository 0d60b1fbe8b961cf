"""The metrics the Ankh paper reports, in plain numpy (no TensorFlow, no scipy needed at run time).

* :func:`accuracy` (per sequence, or per residue over scored positions: Q3/Q8, localization, fold, solubility);
* :func:`spearman` (fluorescence), with average ranks for ties;
* :func:`contact_precision` (long-range precision at L/k: pairs with |i-j| >= 24 ranked by contact probability);
* :func:`lookup_accuracy` (nearest-neighbour label transfer, per CATH level C/A/T/H);
* :func:`micro_f1` (multi-label heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100


def accuracy(predictions, labels, ignore_index: int = IGNORE) -> float:
    """Fraction of positions with ``labels != ignore_index`` where ``predictions == labels``."""
    p, y = np.asarray(predictions).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise ValueError(f"accuracy: {p.shape[0]} predictions for {y.shape[0]} labels")
    scored = y != ignore_index
    if not scored.any():
        raise ValueError("accuracy: no scored labels")
    return float((p[scored] == y[scored]).mean())


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties get the average of the ranks they span (as ``scipy.stats.rankdata``)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); NaN if either side is constant or
    holds a NaN (as ``scipy.stats.spearmanr``: a NaN has no rank, so no correlation is claimed)."""
    x, y = np.asarray(predictions, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if x.size != y.size or x.size < 2:
        raise ValueError(f"spearman: need two equal-length vectors of >= 2 values, got {x.size} and {y.size}")
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    a, b = rankdata(x), rankdata(y)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def micro_f1(predictions, labels, mask=None) -> float:
    """Micro-averaged F1 of multi-hot predictions; ``mask`` (broadcastable) selects scored entries."""
    p, y = np.asarray(predictions).astype(bool), np.asarray(labels).astype(bool)
    m = np.ones_like(y) if mask is None else np.broadcast_to(np.asarray(mask).astype(bool), y.shape)
    tp = (p & y & m).sum()
    fp = (p & ~y & m).sum()
    fn = (~p & y & m).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0


def contact_precision(probabilities: Sequence[np.ndarray], contacts: Sequence[np.ndarray],
                      valid: Sequence[np.ndarray], *, fractions=(1, 5), min_separation: int = 24
                      ) -> dict[str, float]:
    """Long-range contact precision at L/k, averaged over proteins.

    For each protein of length L: among pairs i < j with ``j - i >= min_separation`` and both residues valid, take
    the ``L // k`` pairs with the highest probability and count the true contacts. Returns ``{"L/1": ..,
    "L/5": ..}``. ``probabilities``/``contacts`` are [L, L] per protein, ``valid`` [L] booleans.
    """
    totals = {f"L/{k}": [] for k in fractions}
    for prob, contact, ok in zip(probabilities, contacts, valid, strict=True):
        length = prob.shape[0]
        i, j = np.triu_indices(length, k=min_separation)
        keep = np.asarray(ok, bool)[i] & np.asarray(ok, bool)[j]
        i, j = i[keep], j[keep]
        if i.size == 0:
            continue
        scores = np.asarray(prob)[i, j]
        truth = np.asarray(contact, bool)[i, j]
        order = np.argsort(-scores, kind="stable")
        for k in fractions:
            top = max(length // k, 1)
            totals[f"L/{k}"].append(float(truth[order[:top]].sum()) / top)
    return {name: (float(np.mean(v)) if v else float("nan")) for name, v in totals.items()}


def contact_map(coordinates: np.ndarray, *, threshold: float = 8.0) -> np.ndarray:
    """[L, 3] (Cβ) coordinates -> [L, L] booleans: distance < ``threshold`` Å."""
    c = np.asarray(coordinates, np.float64)
    dist = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    return dist < threshold


def cath_levels(label: str, levels: int = 4) -> tuple[str, ...]:
    """'1.10.8.10' -> ('1', '1.10', '1.10.8', '1.10.8.10'): the prefix naming each CATH level."""
    parts = str(label).strip().split(".")
    return tuple(".".join(parts[:n + 1]) for n in range(min(levels, len(parts))))


LOOKUP_LEVELS = ("C", "A", "T", "H")


def lookup_accuracy(query_labels: Sequence[str], hit_labels: Sequence[str]) -> dict[str, float]:
    """Per CATH level, the fraction of queries whose nearest lookup hit shares the label up to that level."""
    if len(query_labels) != len(hit_labels) or not query_labels:
        raise ValueError(f"lookup_accuracy: {len(query_labels)} queries, {len(hit_labels)} hits")
    out = {}
    for n, name in enumerate(LOOKUP_LEVELS):
        hits = []
        for q, h in zip(query_labels, hit_labels, strict=True):
            ql, hl = cath_levels(q), cath_levels(h)
            if len(ql) > n:
                hits.append(len(hl) > n and ql[n] == hl[n])
        out[name] = float(np.mean(hits)) if hits else float("nan")
    return out


def cosine_nearest(queries: np.ndarray, lookup: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """Index into ``lookup`` [M, d] of the most cosine-similar row for each of ``queries`` [N, d]."""
    def normalise(x):
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    q, db = normalise(queries), normalise(lookup)
    return np.concatenate([np.argmax(q[s:s + chunk] @ db.T, axis=1) for s in range(0, len(q), chunk)])
