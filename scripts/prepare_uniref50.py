"""Builds the UniRef50 TFDS dataset from a FASTA file (the command-line front end of ankh_jax.data.uniref50).

    python scripts/prepare_uniref50.py --fasta=uniref50.fasta.gz --output_dir=DIR [--num_shards=N]
        [--validation_fraction=F] [--min_length=N] [--max_length=N] [--strict] [--overwrite]

Writes ``DIR/uniref50/1.0.0/`` (TFRecord shards plus tfds's ``dataset_info.json`` / ``features.json`` /
``metadata.json``) and ``DIR/stats.json`` (records per split, residues, length histogram, records skipped and why).
Streams the FASTA (plain or gzip) in constant memory with a progress bar (records/s). Invalid records are skipped
and counted unless ``--strict``, which stops at the first with an error naming file, record and position.
Point training at it with ``--gin.uniref50_data_dir.data_dir="'DIR'"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fasta", required=True, help="UniRef50 FASTA, plain or .gz")
    p.add_argument("--output_dir", required=True, help="tfds data dir to write")
    p.add_argument("--num_shards", type=int, default=None,
                   help="files per split; at least the number of hosts that will read it (default: by size)")
    p.add_argument("--validation_fraction", type=float, default=0.0005,
                   help="share of ids (by SHA-1 of the id) in the validation split")
    p.add_argument("--min_length", type=int, default=1, help="skip shorter sequences (residues)")
    p.add_argument("--max_length", type=int, default=None,
                   help="skip longer sequences (default: keep all; training crops them randomly)")
    p.add_argument("--strict", action="store_true", help="stop at the first invalid record instead of skipping")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset exists")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.num_shards is not None and args.num_shards < 1:
        raise SystemExit(f"--num_shards must be >= 1, got {args.num_shards}")
    if not os.path.isfile(args.fasta):
        raise SystemExit(f"--fasta: no such file: {args.fasta}")
    import tensorflow_datasets as tfds

    from ankh_jax.data import uniref50

    tfds.disable_progress_bar()  # ours counts records/s per pass instead
    start = time.time()
    builder = uniref50.build(args.fasta, args.output_dir, num_shards=args.num_shards,
                             validation_fraction=args.validation_fraction, min_length=args.min_length,
                             max_length=args.max_length, skip_invalid=not args.strict,
                             progress=not args.no_progress, overwrite=args.overwrite)
    seconds = time.time() - start
    meta = dict(builder.info.metadata)
    splits = {name: {"records": split.num_examples, "shards": split.num_shards,
                     "bytes": split.num_bytes, **meta.get(f"{name}_stats", {})}
              for name, split in builder.info.splits.items()}
    stats = {
        "dataset_dir": os.fspath(builder.data_dir), "fasta": os.path.abspath(args.fasta),
        "version": str(builder.info.version),
        "parameters": {k: meta.get(k) for k in ("validation_fraction", "min_length", "max_length", "split_rule")},
        "records_in_fasta": meta.get("records_in_fasta"),
        "splits": splits,
        "skipped": meta.get("skipped", {}),
        "seconds": round(seconds, 2),
    }
    if meta.get("records_in_fasta"):
        stats["records_per_second"] = round(meta["records_in_fasta"] / max(seconds, 1e-9), 1)  # both passes included
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "stats.json")
    with open(path, "w") as f:
        json.dump(stats, f, indent=1)
    skipped = sum(v["count"] for v in stats["skipped"].values())
    summary = ", ".join(f"{k} {v['records']} records in {v['shards']} shards" for k, v in splits.items())
    print(f"{builder.data_dir}: {summary}; {skipped} skipped; {seconds:.1f} s; stats in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
