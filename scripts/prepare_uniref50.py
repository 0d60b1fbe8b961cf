"""Builds a pretraining dataset (UniRef50/90/100, BFD) as TFDS from FASTA files (front end of ankh_jax.data.uniref).

    python scripts/prepare_uniref50.py --fasta=uniref50.fasta.gz --output_dir=DIR [--config=uniref50]
        [--num_shards=N] [--validation_fraction=F] [--min_length=N] [--max_length=N] [--strict] [--overwrite]
        [--beam_runner=DirectRunner [BEAM PIPELINE FLAGS ...]]

``--fasta`` takes paths and globs, comma-separated, local or ``gs://`` (``--fasta='parts/uniref90-*.fasta.gz'``).
Writes ``DIR/<config>/1.0.0/`` (TFRecord shards plus tfds's ``dataset_info.json`` / ``features.json`` /
``metadata.json``) and ``DIR/stats.json`` (records per split, residues, length histogram, records skipped and why).
Without ``--beam_runner`` it builds in one process, reading the input once with a progress bar (records/s); with it,
on Apache Beam (``pip install 'ankh-jax[beam]'``), and every argument this script does not know is handed to Beam
as a pipeline option (``--direct_num_workers=2 --direct_running_mode=multi_processing``, or Dataflow's
``--project``, ``--region``, ``--temp_location``...). Invalid records are skipped and counted unless ``--strict``,
which stops at the first with an error naming file, record and position. Bad input (a missing file, a glob that
matches nothing, a file that is not FASTA, an unknown config, a validation fraction that would leave the
validation split empty) is one line on stderr and exit status 2, before anything is written.
Point training at it with ``--gin.pretraining_data.data_dir="'DIR'"`` (and ``.dataset='uniref90'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
PROG = "prepare_uniref50"
EXIT_BAD_INPUT = 2


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--fasta", required=True, help="FASTA paths or globs, comma-separated (plain or .gz; gs:// too)")
    p.add_argument("--output_dir", required=True, help="tfds data dir to write (local or gs://)")
    p.add_argument("--config", default="uniref50", help="uniref50, uniref90, uniref100 or bfd")
    p.add_argument("--num_shards", type=int, default=None,
                   help="files per split; at least the number of hosts that will read it (default: by size)")
    p.add_argument("--validation_fraction", type=float, default=0.0005,
                   help="share of ids (by SHA-1 of the id) in the validation split; 0: no validation split")
    p.add_argument("--min_length", type=int, default=1, help="skip shorter sequences (residues)")
    p.add_argument("--max_length", type=int, default=None,
                   help="skip longer sequences (default: keep all; training crops them randomly)")
    p.add_argument("--strict", action="store_true", help="stop at the first invalid record instead of skipping")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--beam_runner", default=None,
                   help="build on Apache Beam with this runner (DirectRunner, DataflowRunner, ...); unknown "
                        "arguments become Beam pipeline options")
    args, beam_flags = p.parse_known_args(argv)
    if beam_flags and not args.beam_runner:
        p.error(f"unrecognized arguments: {' '.join(beam_flags)} (Beam pipeline options need --beam_runner)")
    return args, beam_flags


def _input_errors() -> tuple[type[BaseException], ...]:
    from ankh_jax.data.fasta import FastaFormatError
    from ankh_jax.data.tokenizer import InvalidSequenceError
    from ankh_jax.errors import InputError

    return InputError, FastaFormatError, InvalidSequenceError, FileNotFoundError


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


def _worker_error(err: BaseException) -> str | None:
    """The input error a Beam worker raised, found in the runner's wrapped exception (its text or its chain)."""
    names = [e.__name__ for e in _input_errors()]
    seen = err
    while seen is not None:
        if isinstance(seen, _input_errors()):
            return _one_line(seen)
        seen = seen.__cause__ or seen.__context__
    for line in reversed(str(err).splitlines()):
        for name in names:
            if f"{name}: " in line:
                return line[line.index(f"{name}: ") + len(name) + 2:].strip()
    return None


def write_stats(builder, args, seconds: float) -> tuple[str, dict]:
    meta = dict(builder.info.metadata)
    splits = {name: {"records": split.num_examples, "shards": split.num_shards,
                     "bytes": split.num_bytes, **meta.get(f"{name}_stats", {})}
              for name, split in builder.info.splits.items()}
    stats = {
        "dataset_dir": os.fspath(builder.data_dir), "config": meta.get("config", args.config),
        "fasta": meta.get("source_files"), "version": str(builder.info.version),
        "beam_runner": meta.get("beam_runner"),
        "parameters": {k: meta.get(k) for k in ("validation_fraction", "min_length", "max_length", "split_rule")},
        "records_in_fasta": meta.get("records_in_fasta"),
        "splits": splits,
        "skipped": meta.get("skipped", {}),
        "seconds": round(seconds, 2),
    }
    if meta.get("records_in_fasta"):
        stats["records_per_second"] = round(meta["records_in_fasta"] / max(seconds, 1e-9), 1)
    from etils import epath

    path = epath.Path(args.output_dir) / "stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    tmp.replace(path)
    return os.fspath(path), stats


def main(argv=None) -> int:
    args, beam_flags = parse_args(argv)
    import tensorflow_datasets as tfds

    from ankh_jax.data import uniref

    tfds.disable_progress_bar()  # ours counts records/s instead
    start = time.time()
    try:
        builder = uniref.build(args.fasta.split(","), args.output_dir, config=args.config,
                               num_shards=args.num_shards, validation_fraction=args.validation_fraction,
                               min_length=args.min_length, max_length=args.max_length,
                               skip_invalid=not args.strict, progress=not args.no_progress,
                               overwrite=args.overwrite, beam_runner=args.beam_runner, beam_options=beam_flags)
    except _input_errors() as err:
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:
        message = _worker_error(err) if args.beam_runner else None
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    seconds = time.time() - start
    path, stats = write_stats(builder, args, seconds)
    skipped = sum(v["count"] for v in stats["skipped"].values())
    summary = ", ".join(f"{k} {v['records']} records in {v['shards']} shards" for k, v in stats["splits"].items())
    print(f"{builder.data_dir}: {summary}; {skipped} skipped; {seconds:.1f} s; stats in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
