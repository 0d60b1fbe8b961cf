"""UniRef50 as a TensorFlow Datasets dataset, built the way t5x users get C4.

The FASTA (``uniref50.fasta.gz`` or plain, from https://www.uniprot.org/help/downloads) is the *manual download*:
tfds never fetches it. Building streams it record by record (constant memory: tfds spills its write-shuffle
buffer to disk past 1 GB), cleans each sequence with Ankh's rules (``ankh_jax.data.tokenizer.clean_sequence``), drops
records that are invalid or outside ``[min_length, max_length]`` (counted by reason), and sends each id to
``validation`` when a hash of it falls below ``validation_fraction`` (so the split is deterministic, independent of
file order, and stable when the file grows), else to ``train``. Each split is written as ``num_shards`` TFRecord
files with features ``id`` and ``sequence`` (text), so each host of a pod slice reads its own files through
``seqio.TfdsDataSource`` with a ``seqio.ShardInfo``. tfds records the version, splits, shard lengths and
features in its own files (``dataset_info.json``, ``features.json``); the build parameters and the statistics
(counts, length histogram, skipped records and why) are in ``metadata.json`` next to them.

Use :func:`build` (or its command line, ``scripts/prepare_uniref50.py``); read with
``tfds.builder("uniref50", data_dir=...)`` or the seqio task in ``tasks/pretraining.py``.
Each split's generator reads the FASTA once, so a build reads it twice (train, validation).
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ankh_jax.data.fasta import read_fasta
from ankh_jax.data.splits import is_validation
from ankh_jax.errors import InputError, InputNotFoundError

NAME = "uniref50"
LENGTH_BIN_EDGES = (1, 50, 100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 5000, 10000, 40000)
MAX_EXAMPLES_PER_REASON = 5
FASTA_NAMES = ("uniref50.fasta.gz", "uniref50.fasta")


class SplitStats:
    """Counts, residues and a length histogram of the records kept in one split, plus the skipped ones."""

    def __init__(self):
        self.read = 0
        self.kept = 0
        self.residues = 0
        self.min_length: int | None = None
        self.max_length = 0
        self.histogram = np.zeros(len(LENGTH_BIN_EDGES), np.int64)  # bin i: [edge i, edge i+1)
        self.skipped: dict[str, dict] = {}

    def keep(self, length: int) -> None:
        self.kept += 1
        self.residues += length
        self.min_length = length if self.min_length is None else min(self.min_length, length)
        self.max_length = max(self.max_length, length)
        self.histogram[np.searchsorted(LENGTH_BIN_EDGES, length, side="right") - 1] += 1

    def skip(self, reason: str, record_id: str, detail: str) -> None:
        entry = self.skipped.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES_PER_REASON:
            entry["examples"].append({"id": record_id, "detail": detail})

    def as_dict(self) -> dict:
        edges = list(LENGTH_BIN_EDGES) + [None]
        return {
            "records": self.kept, "residues": self.residues, "min_length": self.min_length,
            "max_length": self.max_length, "mean_length": self.residues / self.kept if self.kept else None,
            "length_histogram": [{"from": edges[i], "below": edges[i + 1], "count": int(c)}
                                 for i, c in enumerate(self.histogram)],
        }


class Uniref50(tfds.core.GeneratorBasedBuilder):
    """UniRef50 protein clusters' representative sequences (``id``, cleaned ``sequence``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {  # noqa: RUF012 - the attribute tfds reads
        "1.0.0": "Sequences cleaned with Ankh's rules; validation split by SHA-1 of the id."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download uniref50.fasta.gz from https://ftp.uniprot.org/pub/databases/uniprot/uniref/uniref50/ into the "
        "manual directory (or pass --fasta to scripts/prepare_uniref50.py, which points tfds at it).")

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9's default probes ``importlib_resources``, a package it does not install; this file is the answer.
        return epath.Path(__file__)

    def __init__(self, *, validation_fraction: float = 0.0005, min_length: int = 1, max_length: int | None = None,
                 fasta_filename: str | None = None, skip_invalid: bool = True, progress: bool = False, **kwargs):
        if not 0 <= validation_fraction < 1:
            raise InputError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
        if min_length < 1 or (max_length is not None and max_length < min_length):
            raise InputError(f"bad length range [{min_length}, {max_length}]")
        self.validation_fraction = validation_fraction
        self.min_length = min_length
        self.max_length = max_length
        self.fasta_filename = fasta_filename
        self.skip_invalid = skip_invalid
        self.progress = progress
        self.split_stats: dict[str, SplitStats] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="UniRef50 representative sequences for pretraining Ankh.",
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(), "sequence": tfds.features.Text()}),
            homepage="https://www.uniprot.org/help/uniref",
            citation="Suzek et al., UniRef clusters, Bioinformatics 31(6), 2015.",
            metadata=tfds.core.MetadataDict(),
        )

    def _fasta_path(self, manual_dir) -> str:
        names = (self.fasta_filename,) if self.fasta_filename else FASTA_NAMES
        for name in names:
            path = os.path.join(os.fspath(manual_dir), name)
            if os.path.exists(path):
                return path
        raise InputNotFoundError(f"none of {list(names)} in the manual directory {os.fspath(manual_dir)}. "
                                + self.MANUAL_DOWNLOAD_INSTRUCTIONS)

    def _split_generators(self, dl_manager):
        fasta = self._fasta_path(dl_manager.manual_dir)
        self.info.metadata.update({
            "source_fasta": os.path.abspath(fasta), "validation_fraction": self.validation_fraction,
            "min_length": self.min_length, "max_length": self.max_length,
            "split_rule": "validation iff int(sha1(id)[:8 bytes], big endian) / 2**64 < validation_fraction",
        })
        splits = {"train": self._generate_examples(fasta, "train")}
        if self.validation_fraction > 0:
            splits["validation"] = self._generate_examples(fasta, "validation")
        return splits

    def _generate_examples(self, fasta: str, split: str):
        stats = self.split_stats.setdefault(split, SplitStats())
        skipped_invalid: list[tuple[str, str]] = []
        records = read_fasta(fasta, skip_invalid=self.skip_invalid,
                             on_skip=lambda rid, why: skipped_invalid.append((rid, why)))
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(desc=f"{split} pass", unit=" records", mininterval=1.0, smoothing=0.1)
        start = time.time()
        for record in records:
            while skipped_invalid:
                stats.read += 1
                stats.skip("invalid_residue", *skipped_invalid.pop())
            stats.read += 1
            if bar is not None:
                bar.update(1)
            if is_validation(record.id, self.validation_fraction) != (split == "validation"):
                continue
            n = len(record.sequence)
            if n < self.min_length:
                stats.skip("too_short", record.id, f"{n} < min_length {self.min_length}")
                continue
            if self.max_length is not None and n > self.max_length:
                stats.skip("too_long", record.id, f"{n} > max_length {self.max_length}")
                continue
            stats.keep(n)
            yield record.id, {"id": record.id, "sequence": record.sequence}
        while skipped_invalid:
            stats.read += 1
            stats.skip("invalid_residue", *skipped_invalid.pop())
        if bar is not None:
            bar.close()
        self.info.metadata[f"{split}_stats"] = stats.as_dict()
        self.info.metadata[f"{split}_pass_seconds"] = round(time.time() - start, 3)
        if split == "train":  # both passes see every record; report the whole file once
            self.info.metadata["records_in_fasta"] = stats.read
            self.info.metadata["skipped"] = _merge_skips(stats.skipped, {})
        else:
            self.info.metadata["skipped"] = _merge_skips(self.info.metadata.get("skipped", {}), stats.skipped)


def _merge_skips(a: dict, b: dict) -> dict:
    """Invalid records are seen by both passes (count once); length skips belong to one split each (add)."""
    out = {k: {"count": v["count"], "examples": list(v["examples"])} for k, v in a.items()}
    for reason, entry in b.items():
        if reason == "invalid_residue" and reason in out:
            continue
        cur = out.setdefault(reason, {"count": 0, "examples": []})
        cur["count"] += entry["count"]
        cur["examples"] = (cur["examples"] + entry["examples"])[:MAX_EXAMPLES_PER_REASON]
    return out


def build(fasta: str, data_dir: str, *, num_shards: int | None = None, validation_fraction: float = 0.0005,
          min_length: int = 1, max_length: int | None = None, skip_invalid: bool = True,
          progress: bool = False, overwrite: bool = False) -> Uniref50:
    """Builds ``data_dir/uniref50/1.0.0`` from a FASTA file and returns the (prepared) builder.

    ``num_shards`` files per split (default: tfds's size-based choice); pick at least the number of hosts that
    will read the data. ``skip_invalid=False`` makes a bad record an error naming file, record and position.
    An existing build is reused unless ``overwrite``.
    """
    fasta = os.path.abspath(os.fspath(fasta))
    if not os.path.isfile(fasta):
        raise InputNotFoundError(f"FASTA file not found: {fasta}")
    builder = Uniref50(data_dir=data_dir, validation_fraction=validation_fraction, min_length=min_length,
                       max_length=max_length, fasta_filename=os.path.basename(fasta), skip_invalid=skip_invalid,
                       progress=progress)
    if overwrite and os.path.isdir(builder.data_dir):
        shutil.rmtree(builder.data_dir)
    config = tfds.download.DownloadConfig(manual_dir=os.path.dirname(fasta), num_shards=num_shards,
                                          try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except AssertionError as e:  # tfds's way of saying a split is smaller than the shard count
        if "number_of_shards" not in str(e):
            raise
        counts = {k: v.kept for k, v in builder.split_stats.items()}
        raise InputError(f"cannot write {num_shards} shards per split: records per split {counts}; lower "
                         f"num_shards or raise validation_fraction ({e})") from e
    if not builder.split_stats and not overwrite:  # reused: reload the info written by the earlier build
        builder = tfds.builder(NAME, data_dir=data_dir)
    return builder
