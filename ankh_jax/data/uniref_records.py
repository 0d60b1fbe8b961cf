"""What a UniRef/BFD build does with each FASTA record, the same in one process and on Beam workers.

Each record is cleaned with Ankh's rules (``ankh_jax.data.fasta.read_fasta``), skipped when invalid (counted, or an
error naming file, record and position with ``skip_invalid=False``) or outside ``[min_length, max_length]``, and
sent to ``validation`` when :func:`ankh_jax.data.splits.is_validation` says so for its id, else to ``train``.
:class:`BuildStats` counts what happened (records read, per split: records, residues, length range and histogram;
skipped records by reason with the first few examples) and merges, so Beam workers can count their files apart
and add up. "First" examples are first by position in the input (file, then record), whichever way it was read,
so both builds write the same statistics.

:class:`SinglePass` gives the one-process build its splits from ONE read of the input: the split that tfds asks
for first streams the files and spills the other split's records to a local file that the second split reads.

Pure Python (no TensorFlow, no Beam): Beam workers import it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from ankh_jax.data.fasta import read_fasta
from ankh_jax.data.splits import is_validation
from ankh_jax.errors import InputError

LENGTH_BIN_EDGES = (1, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 5000, 10000, 40000)
MAX_EXAMPLES_PER_REASON = 5
SPLIT_RULE = "validation iff int(sha1(id)[:8 bytes], big endian) / 2**64 < validation_fraction"


@dataclasses.dataclass(frozen=True)
class BuildRules:
    """What a build keeps and where it goes (the parameters recorded in the dataset's metadata)."""

    validation_fraction: float = 0.0005
    min_length: int = 1
    max_length: int | None = None
    skip_invalid: bool = True

    def __post_init__(self):
        if not 0 <= self.validation_fraction < 1:
            raise InputError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.min_length < 1 or (self.max_length is not None and self.max_length < self.min_length):
            raise InputError(f"bad length range [{self.min_length}, {self.max_length}]: need 1 <= min <= max")

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "validation") if self.validation_fraction > 0 else ("train",)

    def split_of(self, record_id: str) -> str:
        return "validation" if is_validation(record_id, self.validation_fraction) else "train"

    def length_problem(self, n: int) -> tuple[str, str] | None:
        """``(reason, detail)`` when a sequence of ``n`` residues is outside the length range, else None."""
        if n < self.min_length:
            return "too_short", f"{n} < min_length {self.min_length}"
        if self.max_length is not None and n > self.max_length:
            return "too_long", f"{n} > max_length {self.max_length}"
        return None

    def metadata(self) -> dict:
        return {"validation_fraction": self.validation_fraction, "min_length": self.min_length,
                "max_length": self.max_length, "split_rule": SPLIT_RULE}


class SplitStats:
    """Records kept in one split: count, residues, length range and histogram (bin i: [edge i, edge i+1))."""

    def __init__(self):
        self.kept = 0
        self.residues = 0
        self.min_length: int | None = None
        self.max_length = 0
        self.histogram = np.zeros(len(LENGTH_BIN_EDGES), np.int64)

    def keep(self, length: int) -> None:
        self.kept += 1
        self.residues += length
        self.min_length = length if self.min_length is None else min(self.min_length, length)
        self.max_length = max(self.max_length, length)
        self.histogram[np.searchsorted(LENGTH_BIN_EDGES, length, side="right") - 1] += 1

    def merge(self, other: SplitStats) -> None:
        self.kept += other.kept
        self.residues += other.residues
        if other.min_length is not None:
            self.min_length = other.min_length if self.min_length is None else min(self.min_length,
                                                                                    other.min_length)
        self.max_length = max(self.max_length, other.max_length)
        self.histogram += other.histogram

    def as_dict(self) -> dict:
        edges = list(LENGTH_BIN_EDGES) + [None]
        return {
            "records": self.kept, "residues": self.residues, "min_length": self.min_length,
            "max_length": self.max_length, "mean_length": self.residues / self.kept if self.kept else None,
            "length_histogram": [{"from": edges[i], "below": edges[i + 1], "count": int(c)}
                                 for i, c in enumerate(self.histogram)],
        }


class BuildStats:
    """Everything a build counts; :meth:`merge` adds another worker's counts."""

    def __init__(self, splits: Sequence[str] = ("train", "validation")):
        self.records_read = 0
        self.splits = {s: SplitStats() for s in splits}
        # reason -> [count, [(position, id, detail), ...]] with position = (file index, record index in the file)
        self.skipped: dict[str, list] = {}

    def skip(self, reason: str, position: tuple[int, int], record_id: str, detail: str) -> None:
        entry = self.skipped.setdefault(reason, [0, []])
        entry[0] += 1
        if len(entry[1]) < MAX_EXAMPLES_PER_REASON:  # records of one file arrive in order
            entry[1].append((position, record_id, detail))

    def merge(self, other: BuildStats) -> BuildStats:
        self.records_read += other.records_read
        for name, split in other.splits.items():
            self.splits.setdefault(name, SplitStats()).merge(split)
        for reason, (count, examples) in other.skipped.items():
            entry = self.skipped.setdefault(reason, [0, []])
            entry[0] += count
            entry[1] = sorted(entry[1] + examples)[:MAX_EXAMPLES_PER_REASON]
        return self

    def metadata(self) -> dict:
        """The keys the dataset's ``metadata.json`` has always had (``records_in_fasta``, ``skipped``,
        ``<split>_stats``)."""
        out = {"records_in_fasta": self.records_read,
               "skipped": {reason: {"count": count, "examples": [{"id": i, "detail": d} for _, i, d in examples]}
                           for reason, (count, examples) in sorted(self.skipped.items())}}
        out.update({f"{name}_stats": split.as_dict() for name, split in self.splits.items()})
        return out


def classified_records(file_index: int, path: str, rules: BuildRules,
                       stats: BuildStats) -> Iterator[tuple[str, str, str]]:
    """``(split, id, sequence)`` of the records of one file that a build keeps, counting everything in ``stats``."""
    invalid: list[tuple[str, str]] = []
    index = 0

    def count_invalid():
        nonlocal index
        for rid, why in invalid:
            stats.records_read += 1
            stats.skip("invalid_residue", (file_index, index), rid, why)
            index += 1
        invalid.clear()

    for record in read_fasta(path, skip_invalid=rules.skip_invalid, on_skip=lambda r, w: invalid.append((r, w))):
        count_invalid()
        position = (file_index, index)
        index += 1
        stats.records_read += 1
        n = len(record.sequence)
        problem = rules.length_problem(n)
        if problem is not None:
            stats.skip(problem[0], position, record.id, problem[1])
            continue
        split = rules.split_of(record.id)
        stats.splits[split].keep(n)
        yield split, record.id, record.sequence
    count_invalid()


class SinglePass:
    """One read of ``files`` shared by the splits of a one-process build (see the module docstring).

    tfds writes its splits one after the other; the first split asked streams the input and yields its own records,
    writing the others to ``id<TAB>sequence`` spill files; each later split reads its spill. ``stats`` is complete
    once the first split has been consumed. ``on_record()`` is called once per input record (a progress bar).
    """

    def __init__(self, files: Sequence[str], rules: BuildRules, *, on_record=None):
        self.files = list(files)
        self.rules = rules
        self.stats: BuildStats | None = None
        self.on_record = on_record
        self._spill_dir: tempfile.TemporaryDirectory | None = None
        self._spills: dict[str, str] = {}

    def records(self, split: str) -> Iterator[tuple[str, str]]:
        if split in self._spills:
            yield from self._read_spill(split)
        elif self.stats is None:
            yield from self._stream(split)
        else:
            raise RuntimeError(f"split {split!r} asked for twice in one build")

    def _stream(self, split: str) -> Iterator[tuple[str, str]]:
        stats = BuildStats(self.rules.splits)
        self._spill_dir = tempfile.TemporaryDirectory(prefix="ankh_jax_split_spill_")
        spills = {s: open(os.path.join(self._spill_dir.name, f"{s}.tsv"), "w")  # noqa: SIM115 - closed below
                  for s in self.rules.splits if s != split}
        try:
            for file_index, path in enumerate(self.files):
                read_before = stats.records_read
                for record_split, rid, seq in classified_records(file_index, path, self.rules, stats):
                    if self.on_record is not None:
                        self.on_record(stats.records_read - read_before)
                        read_before = stats.records_read
                    if record_split == split:
                        yield rid, seq
                    else:
                        spills[record_split].write(f"{rid}\t{seq}\n")
                if self.on_record is not None:
                    self.on_record(stats.records_read - read_before)
        finally:
            for f in spills.values():
                f.close()
        self._spills = {s: f.name for s, f in spills.items()}
        self.stats = stats

    def _read_spill(self, split: str) -> Iterator[tuple[str, str]]:
        with open(self._spills.pop(split)) as f:
            for line in f:
                rid, seq = line.rstrip("\n").split("\t")
                yield rid, seq
        if not self._spills and self._spill_dir is not None:
            self._spill_dir.cleanup()
