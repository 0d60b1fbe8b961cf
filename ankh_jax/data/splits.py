"""The one rule that carves a validation split out of data that has none: by a hash of each record's key.

A record is in validation iff the first 8 bytes of the SHA-1 of its key (UTF-8), read as a big-endian integer
over 2**64, fall below the fraction. The split is deterministic, independent of file order, and stable when the
data grows. UniRef50 pretraining keys on the record id, downstream tasks without a validation file on the
sequence. No heavy imports.
"""

from __future__ import annotations

import hashlib


def validation_score(key: str) -> float:
    """The number in [0, 1) that the rule compares with the fraction (see the module docstring)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(key: str, fraction: float) -> bool:
    """True when ``key`` belongs to the validation split of this ``fraction`` (see the module docstring)."""
    return validation_score(key) < fraction
