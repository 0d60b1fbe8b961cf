"""The checks a UniRef/BFD build makes before any work: which files, are they FASTA, will validation be empty.

* :func:`resolve_fasta_files`: paths and globs (local or ``gs://``) -> the sorted, de-duplicated file list; a glob
  that matches nothing or a missing file is an :class:`InputError` naming it.
* :func:`check_fasta_heads`: each file's first record is read (a few bytes): text that is not FASTA (no ``>``
  header first, binary, UTF-16) or an empty file is an error naming the file and line.
* :func:`check_validation_split`: a validation fraction so small for the input that the split would be empty (tfds
  then fails after the whole build with "No examples were yielded") is an error that says which fraction works.
  The number of records is estimated from the first MiB of the first file and the total size; when the expected
  count is small and the input is small (at most ~10^6 records) the check is exact, by one quick pass.
"""

from __future__ import annotations

import glob
import gzip
import math
import os
from collections.abc import Iterable, Sequence

from ankh_jax.data.fasta import FastaFormatError, open_lines, read_fasta
from ankh_jax.errors import InputError

HEAD_BYTES = 1 << 20
EXACT_CHECK_MAX_RECORDS = 1_000_000
EXPECTED_VALIDATION_SAFE = 30   # P(empty) = e^-30 for a Poisson count with this mean
EXPECTED_VALIDATION_REFUSE = 5  # a large input expecting fewer than this is refused without a pass


def _is_remote(path: str) -> bool:
    return "://" in path


def _glob(pattern: str) -> list[str]:
    if _is_remote(pattern):
        import tensorflow as tf

        return sorted(tf.io.gfile.glob(pattern))
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def _exists(path: str) -> bool:
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
    return os.path.isfile(path)


def resolve_fasta_files(patterns: str | Iterable[str]) -> list[str]:
    """Expands comma-separated paths and globs in order (each glob's matches sorted); duplicates are dropped."""
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [os.fspath(patterns)]
    items = [p.strip() for item in patterns for p in os.fspath(item).split(",") if p.strip()]
    if not items:
        raise InputError("no FASTA file given")
    files: list[str] = []
    for item in items:
        if any(c in item for c in "*?["):
            matches = _glob(item)
            if not matches:
                raise InputError(f"{item}: the pattern matches no file")
        elif _exists(item):
            matches = [item]
        elif not _is_remote(item) and os.path.isdir(item):
            raise InputError(f"{item}: is a directory, not a FASTA file (give a glob such as {item}/*.fasta)")
        else:
            raise InputError(f"{item}: no such FASTA file")
        files.extend(m if _is_remote(m) else os.path.abspath(m) for m in matches)
    return list(dict.fromkeys(files))


def check_fasta_heads(files: Sequence[str]) -> None:
    """Reads each file's first record (raw): an error naming the file when it is not FASTA or holds none."""
    for path in files:
        try:
            next(iter(read_fasta(path, clean=False)))
        except StopIteration:
            raise InputError(f"{path}: no FASTA record (empty file, or no '>' header line)") from None
        except FastaFormatError as e:
            raise InputError(str(e)) from None


def _size(path: str) -> int:
    if _is_remote(path):
        import tensorflow as tf

        return tf.io.gfile.stat(path).length
    return os.path.getsize(path)


def estimate_records(files: Sequence[str]) -> float:
    """The headers in the first MiB (uncompressed) of the first file, scaled by the files' total size on disk
    (compressed or not) to that MiB's size on disk; exact when that MiB was all the input."""
    headers = seen = 0
    whole_file = False
    with open_lines(files[0]) as f:
        for line in f:
            seen += len(line)
            headers += line.startswith(b">")
            if seen >= HEAD_BYTES:
                break
        else:
            whole_file = True
        on_disk = f.fileobj.tell() if isinstance(f, gzip.GzipFile) else seen  # compressed bytes read so far
    if whole_file and len(files) == 1:
        return float(headers)
    if whole_file:
        on_disk = _size(files[0])
    return headers / max(on_disk, 1) * sum(_size(p) for p in files)


def _suggested_fraction(smallest_hash: float) -> float:
    """A round fraction just above ``smallest_hash`` (the rule is ``hash < fraction``)."""
    for digits in range(1, 12):
        candidate = math.ceil(smallest_hash * 10**digits * 1.000001) / 10**digits
        if smallest_hash < candidate < 1 and candidate <= smallest_hash * 1.5 + 1e-12:
            return candidate
    return min(smallest_hash * 1.01, 0.999)


def check_validation_split(files: Sequence[str], rules) -> None:
    """An :class:`InputError` when the validation split would be empty (see the module docstring)."""
    from ankh_jax.data.splits import validation_score
    from ankh_jax.data.uniref_records import BuildStats, classified_records

    fraction = rules.validation_fraction
    if fraction == 0:
        return
    records = estimate_records(files)
    expected = records * fraction
    if expected >= EXPECTED_VALIDATION_SAFE:
        return
    where = files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more files"
    if records > EXACT_CHECK_MAX_RECORDS:
        if expected < EXPECTED_VALIDATION_REFUSE:
            raise InputError(
                f"{where}: --validation_fraction={fraction} of about {records:.3g} records expects "
                f"{expected:.2g} validation records; raise it to at least {EXPECTED_VALIDATION_SAFE / records:.2g}")
        return
    stats = BuildStats(rules.splits)
    smallest = 1.0
    for index, path in enumerate(files):
        for split, rid, _ in classified_records(index, path, rules, stats):
            if split == "validation":
                return
            smallest = min(smallest, validation_score(rid))
    kept = stats.splits["train"].kept
    if kept == 0:
        raise InputError(f"{where}: none of its {stats.records_read} records passes the length filter and the "
                         "residue check; nothing to build")
    raise InputError(
        f"{where}: --validation_fraction={fraction} puts none of its {kept} kept records in the validation "
        f"split; use --validation_fraction={_suggested_fraction(smallest):g} or more (the smallest that puts one "
        "there), or --validation_fraction=0 to build the train split only")
