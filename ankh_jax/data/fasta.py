"""Streaming FASTA reading (plain or gzip) with Ankh's cleaning rules.

A record's id is the first whitespace-delimited word of its header and its description the whole header, as in
Biopython (``record.id``, ``record.description``) and the tools keyed by it (bio_embeddings).

Memory is constant in the file size: records are yielded one at a time, so the same reader serves a 50-sequence
test file and the ~45M-sequence UniRef50 dump. Every error names the file, the record and the position.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from ankh_jax.data.tokenizer import InvalidSequenceError, clean_sequence
from ankh_jax.errors import InputError, InputNotFoundError


class FastaFormatError(InputError):
    """The file is not FASTA (text before the first header, an empty id, ...)."""


@dataclasses.dataclass(frozen=True)
class FastaRecord:
    id: str           # the first whitespace-delimited word of the header (Biopython's record.id)
    description: str  # the whole header line after '>' (Biopython's record.description)
    sequence: str     # cleaned: upper case, no whitespace, no trailing '*'
    line: int         # 1-based line number of the header, for error messages


def open_lines(path: str | os.PathLike) -> BinaryIO:
    """Opens a plain or gzip-compressed file for reading lines as bytes (gzip is recognised by its magic bytes,
    not the name); a directory or an unreadable path is a :class:`FastaFormatError` naming it."""
    path = os.fspath(path)
    if "://" in path:  # gs://, through ankh_jax.storage
        return _open_remote(path)
    if os.path.isdir(path):
        raise FastaFormatError(f"{path}: is a directory, not a FASTA file")
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise InputNotFoundError(f"{path}: no such FASTA file") from None
    except OSError as e:
        raise FastaFormatError(f"{path}: cannot be read ({e.strerror or e})") from None
    if magic in (b"\xff\xfe", b"\xfe\xff"):
        raise FastaFormatError(f"{path}: UTF-16 text; FASTA must be ASCII or UTF-8")
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _open_remote(path: str) -> BinaryIO:
    from ankh_jax.storage.paths import as_path

    remote = as_path(path)  # gs:// through the one path layer; another scheme is one line
    if not remote.exists():
        raise InputNotFoundError(f"{path}: no such FASTA file")
    with remote.open("rb") as f:
        magic = f.read(2)
    return gzip.GzipFile(fileobj=remote.open("rb"), mode="rb") if magic == b"\x1f\x8b" else remote.open("rb")


def _decoded_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` with the line ending removed; binary, non-UTF-8 or truncated gzip content is a
    :class:`FastaFormatError` naming the file and line (a UTF-8 byte-order mark is skipped)."""
    lineno = 0
    with open_lines(path) as f:
        try:
            for lineno, raw in enumerate(f, start=1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                nul = raw.find(0)
                if nul >= 0:
                    raise FastaFormatError(f"{path}: line {lineno}: binary data (a NUL byte at column {nul + 1}); "
                                           "not a FASTA text file")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise FastaFormatError(f"{path}: line {lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} "
                                           "is not UTF-8 text; not a FASTA text file") from None
                yield lineno, line.rstrip("\r\n")
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise FastaFormatError(f"{path}: truncated or corrupt gzip data after line {lineno} "
                                   f"({type(e).__name__}: {e})") from None


def _raw_records(path: str) -> Iterator[tuple[str, list[str], int]]:
    header, chunks, header_line = None, [], 0
    for lineno, line in _decoded_lines(path):
        if line.startswith(">"):
            if header is not None:
                yield header, chunks, header_line
            header, chunks, header_line = line[1:].strip(), [], lineno
        elif header is None:
            if line.strip() and not line.startswith(";"):
                raise FastaFormatError(f"{path}: line {lineno}: sequence data before the first '>' header")
        else:
            chunks.append(line)
    if header is not None:
        yield header, chunks, header_line


def read_fasta(path: str | os.PathLike, *, clean: bool = True, skip_invalid: bool = False,
               on_skip=None) -> Iterator[FastaRecord]:
    """Yields the records of a FASTA file.

    With ``clean`` (default) each sequence goes through :func:`ankh_jax.data.tokenizer.clean_sequence`; a bad record
    raises :class:`InvalidSequenceError` naming file, record id and residue position (counted from 1), unless
    ``skip_invalid``, in which case ``on_skip(record_id, reason)`` is called and the record dropped.
    """
    path = os.fspath(path)
    for header, chunks, header_line in _raw_records(path):
        words = header.split(maxsplit=1)  # any whitespace (spaces, tabs) ends the id, as in Biopython
        if not words:
            raise FastaFormatError(f"{path}: line {header_line}: header without an id")
        rid = words[0]
        raw = "".join(chunks)
        if clean:
            try:
                seq = clean_sequence(raw, record=rid, source=f"{path} (line {header_line})")
            except InvalidSequenceError as e:
                if not skip_invalid:
                    raise
                if on_skip is not None:
                    on_skip(rid, str(e))
                continue
        else:
            seq = raw
        yield FastaRecord(rid, header, seq, header_line)


def load_fasta(path: str | os.PathLike, *, unique_ids: bool = True) -> list[FastaRecord]:
    """All records of a file, validated up front (a duplicate id, the header's first word, is an error naming
    both lines: ``>P1 a`` and ``>P1 b`` collide)."""
    records = list(read_fasta(path))
    if unique_ids:
        seen: dict[str, int] = {}
        for r in records:
            if r.id in seen:
                raise FastaFormatError(
                    f"{os.fspath(path)}: duplicate id {r.id!r} at lines {seen[r.id]} and {r.line}")
            seen[r.id] = r.line
    return records


def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.unique(np.array([int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                               for i in ids], dtype=np.uint64))


class _HashSet:
    """Sorted runs of 64-bit hashes, merged like a binary counter (amortised O(n log n) in all, no Python
    object per id)."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def hits(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, hashes), len(run) - 1)
            found |= run[at] == hashes
        return found

    def add(self, hashes: np.ndarray) -> None:
        while self.runs and len(self.runs[-1]) <= len(hashes):
            hashes = np.union1d(self.runs.pop(), hashes)
        self.runs.append(hashes)


def read_windows(path: str | os.PathLike, window: int) -> Iterator[list[FastaRecord]]:
    """The records of a file in windows of ``window`` records, each validated as :func:`load_fasta` validates a
    whole file, so memory is one window whatever the file's size.

    A duplicate id is an error naming both lines, within a window or across windows: each window's ids are checked
    against a sorted array of 64-bit hashes of every earlier id (8 bytes per record; a hash match is confirmed by
    finding the earlier line, so a hash collision is never reported as a duplicate). The error is raised when its
    window is read, that is after the earlier windows have been yielded."""
    if window < 1:
        raise InputError(f"window={window}; must be at least 1")
    path = os.fspath(path)
    seen = _HashSet()
    records: list[FastaRecord] = []

    def check(batch: list[FastaRecord]) -> None:
        lines: dict[str, int] = {}
        for r in batch:
            if r.id in lines:
                raise FastaFormatError(f"{path}: duplicate id {r.id!r} at lines {lines[r.id]} and {r.line}")
            lines[r.id] = r.line
        hashes = _id_hashes(list(lines))
        if seen.runs and seen.hits(hashes).any():
            earlier: dict[str, int] = {}
            for e in read_fasta(path, clean=False):  # the slow path, only on a hash match: find the lines
                if e.line >= batch[0].line:
                    break
                if e.id in lines:
                    earlier.setdefault(e.id, e.line)
            for r in batch:
                if r.id in earlier:
                    raise FastaFormatError(f"{path}: duplicate id {r.id!r} at lines {earlier[r.id]} and {r.line}")
        seen.add(hashes)

    for record in read_fasta(path):
        records.append(record)
        if len(records) == window:
            check(records)
            yield records
            records = []
    if records:
        check(records)
        yield records


def write_fasta(path: str | os.PathLike, records, width: int = 60) -> None:
    """Writes ``(id, sequence)`` pairs or :class:`FastaRecord` objects."""
    with open(path, "w") as f:
        for r in records:
            rid, seq = (r.id, r.sequence) if isinstance(r, FastaRecord) else r
            f.write(f">{rid}\n")
            f.writelines(seq[i: i + width] + "\n" for i in range(0, len(seq), width))
