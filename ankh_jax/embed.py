"""``python -m ankh_jax.embed``: a FASTA file -> per-residue or pooled embeddings in HDF5.

    python -m ankh_jax.embed --model=PATH [--step=N] --fasta=IN.fasta[.gz] --output=OUT.h5 [--pooling=none|mean]
        [--dtype=float32|bfloat16] [--batch_tokens=N] [--max_length=N] [--prefix=[NLU]]
        [--attention_chunk_size=N]

The output has one dataset per id, the header's first word (``/`` in an id is stored as ``%2F``; the exact id is
the dataset's ``id`` attribute, the whole header its ``original_id`` attribute, as bio_embeddings stores it). Re-running resumes an existing output (or a killed run) made by the same model and settings, skipping
the ids already there; ``ankh_jax.io.embeddings_h5`` says how the output survives a kill and never mixes two
models. A metrics JSON goes next to the output. TensorFlow is never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS
from ankh_jax.errors import InputError
from ankh_jax.inference.embedding import (
    DTYPES,
    POOLINGS,
    iter_embeddings,
    output_fingerprint,
)
from ankh_jax.io.embeddings_h5 import FORMAT_VERSION
from ankh_jax.storage.home import enable_compilation_cache


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ankh_jax.embed",
                                description="Embed a FASTA file with an Ankh encoder into HDF5.")
    p.add_argument("--model", required=True, help="an ankh_jax training directory or a HuggingFace model directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of an ankh_jax directory (default latest)")
    p.add_argument("--fasta", required=True, help="input FASTA, plain or gzip")
    p.add_argument("--output", required=True, help="output HDF5; re-running appends, skipping ids already there")
    p.add_argument("--pooling", choices=POOLINGS, default="none", help="none: [L, d] per residue; mean: [d]")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype (output is float32)")
    p.add_argument("--batch_tokens", type=int, default=DEFAULT_BATCH_TOKENS, help="padded tokens per batch")
    p.add_argument("--max_length", type=int, default=None,
                   help="truncate sequences to this many tokens (</s> included); default: no truncation")
    p.add_argument("--attention_chunk_size", type=int, default=None,
                   help="attention in chunks of N tokens (O(L) memory) for batches wider than N; 0: never; "
                        "default: automatic (chunks of 1024 above 2048 tokens)")
    p.add_argument("--prefix", default=None,
                   help="the task prefix token before each sequence, required when the model's tokenizer defines "
                        "prefixes (Ankh3: [NLU] for embeddings); dropped from the output like </s>")
    p.add_argument("--metrics_file", default=None, help="JSON summary (default: OUTPUT with .metrics.json)")
    p.add_argument("--flush_seconds", type=float, default=5.0,
                   help="how often finished embeddings are saved so that a killed run keeps them (0: every batch)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--compilation_cache_dir", default=None,
                   help="persistent XLA compilation cache, so a re-run skips compiling (default: "
                        "$ANKH_JAX_HOME/xla_cache or ~/.cache/ankh_jax/xla_cache; empty string: off)")
    return p.parse_args(argv)


def metrics_path(args: argparse.Namespace) -> str:
    return args.metrics_file or os.path.splitext(args.output)[0] + ".metrics.json"


def run(args: argparse.Namespace) -> dict:
    """Embeds ``args.fasta`` into ``args.output`` (see ``ankh_jax.io.embeddings_h5``); returns the metrics.

    Nothing is created until the flags, the FASTA, the output and the model have all been checked: a refused run
    leaves no file behind and an existing output untouched.
    """
    from ankh_jax.data.fasta import load_fasta
    from ankh_jax.data.tokenizer import read_model_tokens
    from ankh_jax.io.embeddings_h5 import OutputWriter, check_compatible
    from ankh_jax.io.loading import load
    from ankh_jax.storage import outputs

    if args.batch_tokens < 1:
        raise InputError(f"--batch_tokens={args.batch_tokens} must be positive")
    if args.max_length is not None and args.max_length < 2:
        raise InputError(f"--max_length={args.max_length}: it counts </s>, so at least 2")
    if args.attention_chunk_size is not None and args.attention_chunk_size < 0:
        raise InputError(f"--attention_chunk_size={args.attention_chunk_size}: 0 (never chunk) or a positive size")
    if os.path.isdir(metrics_path(args)):
        raise InputError(f"{metrics_path(args)}: is a directory; --metrics_file must be a file path")
    run_attrs = {"model": os.path.abspath(args.model), "pooling": args.pooling, "dtype": args.dtype,
                 "max_length": -1 if args.max_length is None else args.max_length,
                 "format_version": FORMAT_VERSION, "fasta": os.path.abspath(args.fasta)}
    check_compatible(args.output, run_attrs)  # a directory, a foreign HDF5, other settings: before the FASTA
    outputs.check_destinations({"--output": args.output, "--metrics_file": metrics_path(args)}, {"--fasta": args.fasta})
    records = load_fasta(args.fasta)  # invalid residues, empty records, duplicate ids: errors naming the record
    if not records:
        raise InputError(f"{args.fasta}: no sequences")

    t0 = time.perf_counter()
    config, params = load(args.model, encoder_only=True, step=args.step, scan_layers=True)  # the embedding layout
    prefix_id = read_model_tokens(args.model, config.vocab_size).prefix_id(args.prefix)
    run_attrs.update(d_model=config.d_model, fingerprint=output_fingerprint(
        config, params, pooling=args.pooling, dtype=args.dtype, max_length=args.max_length, prefix_id=prefix_id))
    check_compatible(args.output, run_attrs)  # the same model, or refused before anything is written
    metrics = {"load_seconds": round(time.perf_counter() - t0, 3), "fingerprint": run_attrs["fingerprint"]}

    writer = OutputWriter(args.output, run_attrs)
    done = writer.open()
    try:
        todo = [r for r in records if r.id not in done]
        metrics.update(sequences_total=len(records), skipped_existing=len(records) - len(todo),
                       sequences_embedded=len(todo), residues_embedded=int(sum(len(r.sequence) for r in todo)))
        t1 = last_flush = time.perf_counter()
        if todo:
            metrics["compilation_cache_dir"] = enable_compilation_cache(args.compilation_cache_dir)
            for idx, emb in iter_embeddings(config, params, [r.sequence for r in todo], pooling=args.pooling,
                                            dtype=args.dtype, batch_tokens=args.batch_tokens,
                                            max_length=args.max_length, progress=not args.no_progress,
                                            progress_desc=os.path.basename(args.fasta), prefix_id=prefix_id,
                                            attention_chunk_size=args.attention_chunk_size):
                rec = todo[idx]
                writer.add(rec.id, emb, {
                    "original_id": rec.description, "length": len(rec.sequence), "pooling": args.pooling, "dtype": args.dtype,
                    "truncated": args.max_length is not None and len(rec.sequence) + 1 > args.max_length})
                if time.perf_counter() - last_flush >= args.flush_seconds:  # a killed run keeps what it wrote
                    writer.flush()
                    last_flush = time.perf_counter()
        writer.finish()
        seconds = time.perf_counter() - t1
        metrics.update(embed_seconds=round(seconds, 3),
                       residues_per_second=round(metrics["residues_embedded"] / max(seconds, 1e-9), 1))
    finally:
        writer.close()
    return metrics


def main(argv=None) -> int:
    args = parse_args(argv)
    from ankh_jax import flags

    try:
        metrics = run(args)
    except flags.command_errors() as err:
        return flags.report("embed", err)
    metrics_file = metrics_path(args)
    with open(metrics_file + ".tmp", "w") as f:
        json.dump({**metrics, "output": args.output, "model": args.model, "pooling": args.pooling,
                   "dtype": args.dtype}, f, indent=1)
    os.replace(metrics_file + ".tmp", metrics_file)
    print(f"embedded {metrics['sequences_embedded']} sequences ({metrics['skipped_existing']} already in "
          f"{args.output}); metrics in {metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
