"""The ``uniref`` builder's Beam pipeline: imported only when a build asks for a Beam runner (it imports Beam).

One pipeline reads the input ONCE and writes every split::

    FASTA files -> Reshuffle (spread files over workers) -> ReadAndClassify (one file per element:
    ``uniref_records.classified_records``) -> {train, validation: tfds's writers; stats: merged -> JSON}

A file is the unit of parallelism (a gzip file cannot be split), so give a large dataset as many files (UniProt's
one ``uniref90.fasta.gz`` can be cut with ``seqkit split2`` or read as is by one worker). Every worker counts its
files' statistics and the counts are merged (``BuildStats.merge``), so they equal the one-process build's. A bad
record fails its worker with the reader's error, which names the file, the record and the position.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from etils import epath

from ankh_jax.data.uniref_records import BuildRules, BuildStats, classified_records

STATS_FILE = "beam_build_stats.json"  # written by the pipeline into the build's temporary dir, then folded in


def pipeline_options(runner: str, flags: Sequence[str] = ()) -> PipelineOptions:
    """``--runner=<runner>`` plus the caller's Beam flags (``--direct_num_workers=2``, ``--project=...``)."""
    return PipelineOptions(flags=[f"--runner={runner}", *flags])


class ReadAndClassify(beam.DoFn):
    """One FASTA file in, its kept records out by split (``(id, example)``) and its statistics on ``stats``."""

    def __init__(self, rules: BuildRules):
        self.rules = rules

    def process(self, element):
        file_index, path = element
        stats = BuildStats(self.rules.splits)
        for split, rid, seq in classified_records(file_index, path, self.rules, stats):
            yield beam.pvalue.TaggedOutput(split, (rid, {"id": rid, "sequence": seq}))
        yield beam.pvalue.TaggedOutput("stats", stats)


class MergeStats(beam.CombineFn):
    def __init__(self, splits: Sequence[str]):
        self.splits = tuple(splits)

    def create_accumulator(self):
        return BuildStats(self.splits)

    def add_input(self, accumulator, stats):
        return accumulator.merge(stats)

    def merge_accumulators(self, accumulators):
        out = BuildStats(self.splits)
        for a in accumulators:
            out.merge(a)
        return out

    def extract_output(self, accumulator):
        return accumulator


def _write_stats(stats: BuildStats, path: str) -> None:
    epath.Path(path).write_text(json.dumps(stats.metadata()))


def split_pcollections(pipeline, files: Sequence[str], rules: BuildRules, stats_path: str) -> dict:
    """``{split: PCollection of (id, example)}`` from one read of ``files``; the merged statistics go to
    ``stats_path`` (JSON of ``BuildStats.metadata()``) when the pipeline runs."""
    outputs = (pipeline
               | "FastaFiles" >> beam.Create(list(enumerate(files)))
               | "SpreadFiles" >> beam.Reshuffle()
               | "ReadAndClassify" >> beam.ParDo(ReadAndClassify(rules)).with_outputs("stats", *rules.splits))
    _ = (outputs.stats
         | "MergeStats" >> beam.CombineGlobally(MergeStats(rules.splits))
         | "WriteStats" >> beam.Map(_write_stats, stats_path))
    return {split: outputs[split] for split in rules.splits}
