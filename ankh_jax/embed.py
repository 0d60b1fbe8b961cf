"""``python -m ankh_jax.embed``: a FASTA file -> per-residue or pooled embeddings in HDF5.

    python -m ankh_jax.embed --model=PATH [--step=N] --fasta=IN.fasta[.gz] --output=OUT.h5 [--pooling=none|mean]
        [--dtype=float32|bfloat16] [--batch_tokens=N] [--max_length=N] [--prefix=[NLU]]
        [--attention_chunk_size=N] [--num_devices=N] [--num_shards=N --shard_index=I] [--window=N]

The output has one dataset per id, the header's first word (``/`` in an id is stored as ``%2F``; the exact id is
the dataset's ``id`` attribute, the whole header its ``original_id`` attribute, as bio_embeddings stores it).
Re-running resumes an existing output (or a killed run) made by the same model and settings, skipping the ids
already there; ``ankh_jax.io.embeddings_h5`` says how the output survives a kill and never mixes two models.

Scale. The batches are sharded over every local device (``ankh_jax.inference.devices``). ``--num_shards=N
--shard_index=i`` (defaults from a JAX multi-process launch: ``ankh_jax.io.shards``) embeds a disjoint part of
the FASTA, balanced by residues within each window, into ``OUT-0000i-of-0000N.h5``; every shard resumes on its
own and ``ankh_jax.io.embeddings_h5.read_embeddings(OUT)`` reads the set as one. The FASTA is read in windows of
``--window`` sequences, each validated, sorted and bucketed on its own, so memory is bounded by a few windows
(the one running, the next read ahead in a thread) plus 8 bytes per id for the duplicate-id check and the ids
already in the output. A metrics JSON (devices, processes, residues/s, the devices' idle share) goes next to the
output. TensorFlow is never imported.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

from ankh_jax.data.batching import DEFAULT_BATCH_TOKENS
from ankh_jax.errors import InputError
from ankh_jax.inference.embedding import (
    DTYPES,
    POOLINGS,
    output_fingerprint,
)
from ankh_jax.io.embeddings_h5 import FORMAT_VERSION
from ankh_jax.io.shards import add_flags as add_shard_flags
from ankh_jax.io.shards import resolve_shards, shard_path
from ankh_jax.storage.home import enable_compilation_cache

DEFAULT_WINDOW = 100_000


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
    add_shard_flags(p, ".h5")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help="sequences read, validated, sorted and bucketed at a time (memory is one window)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--compilation_cache_dir", default=None,
                   help="persistent XLA compilation cache, so a re-run skips compiling (default: "
                        "$ANKH_JAX_HOME/xla_cache or ~/.cache/ankh_jax/xla_cache; empty string: off)")
    return p.parse_args(argv)


def metrics_path(args: argparse.Namespace, output: str | None = None) -> str:
    return args.metrics_file or os.path.splitext(output or args.output)[0] + ".metrics.json"


def check_flags(args: argparse.Namespace) -> None:
    if args.batch_tokens < 1:
        raise InputError(f"--batch_tokens={args.batch_tokens} must be positive")
    if args.max_length is not None and args.max_length < 2:
        raise InputError(f"--max_length={args.max_length}: it counts </s>, so at least 2")
    if args.attention_chunk_size is not None and args.attention_chunk_size < 0:
        raise InputError(f"--attention_chunk_size={args.attention_chunk_size}: 0 (never chunk) or a positive size")
    if args.window < 1:
        raise InputError(f"--window={args.window}: sequences per window, at least 1")


def _windows(first, rest, done: set, num_shards: int, shard_index: int, args, prefix_id, counts: dict):
    """This shard's records of each window that are not done yet, with their token ids (run ahead in a thread)."""
    from ankh_jax.data.batching import assign_shards
    from ankh_jax.inference.embedding import encode_sequences

    for records in itertools.chain([first], rest):
        counts["sequences_in_fasta"] += len(records)
        if num_shards > 1:
            shards = assign_shards([len(r.sequence) for r in records], num_shards)
            records = [r for r, s in zip(records, shards) if s == shard_index]
        todo = [r for r in records if r.id not in done]
        counts["sequences_total"] += len(records)
        counts["skipped_existing"] += len(records) - len(todo)
        counts["sequences_embedded"] += len(todo)
        counts["residues_embedded"] += sum(len(r.sequence) for r in todo)
        counts["windows"] += 1
        yield todo, encode_sequences([r.sequence for r in todo], args.max_length, prefix_id)


def run(args: argparse.Namespace) -> dict:
    """Embeds ``args.fasta`` (this shard of it) into ``args.output`` (its shard name; see
    ``ankh_jax.io.embeddings_h5``); returns the metrics.

    Nothing is created until the flags, the FASTA's first window, the output and the model have all been checked:
    a refused run leaves no file behind and an existing output untouched. A later window's bad record stops the
    run with what earlier windows computed saved in ``OUT.partial/`` (the re-run resumes from there).
    """
    from ankh_jax.api import load_model
    from ankh_jax.data.fasta import read_windows
    from ankh_jax.inference.devices import DeviceActivity, prefetch
    from ankh_jax.inference.embedding import check_settings, stream_embeddings
    from ankh_jax.io.embeddings_h5 import OutputWriter, check_compatible
    from ankh_jax.storage import outputs
    from ankh_jax.storage.paths import display, is_remote
    from ankh_jax.storage.remote_copy import publish, working_file

    check_flags(args)
    num_shards, shard_index = resolve_shards(args.num_shards, args.shard_index)
    output = published = shard_path(args.output, shard_index, num_shards)
    if is_remote(published):  # HDF5 needs a local file: this host's working copy, uploaded whole at the end
        outputs.check_destinations({"--output": published, "--metrics_file": metrics_path(args, published)},
                                   {"--fasta": args.fasta})
        output = working_file(published)
    if os.path.isdir(metrics_path(args, output)):
        raise InputError(f"{metrics_path(args, output)}: is a directory; --metrics_file must be a file path")
    run_attrs = {"model": display(args.model), "pooling": args.pooling, "dtype": args.dtype,
                 "max_length": -1 if args.max_length is None else args.max_length,
                 "format_version": FORMAT_VERSION, "fasta": display(args.fasta),
                 "shard_index": shard_index, "num_shards": num_shards}
    check_compatible(output, run_attrs)  # a directory, a foreign HDF5, other settings: before the FASTA
    outputs.check_destinations({"--output": output, "--metrics_file": metrics_path(args, output)},
                               {"--fasta": args.fasta})
    windows = read_windows(args.fasta, args.window)  # errors name file, record and position
    first = next(windows, None)  # the first window is checked before anything is created
    if first is None:
        raise InputError(f"{args.fasta}: no sequences")

    t0 = time.perf_counter()
    model = load_model(args.model, encoder_only=True, step=args.step, scan_layers=True)  # the embedding layout
    prefix_id = model.prefix_id(args.prefix)
    run_attrs.update(d_model=model.config.d_model, fingerprint=output_fingerprint(
        model.config, model.params, pooling=args.pooling, dtype=args.dtype, max_length=args.max_length,
        prefix_id=prefix_id))
    check_compatible(output, run_attrs)  # the same model, or refused before anything is written
    check_settings(args.pooling, args.batch_tokens, args.attention_chunk_size)
    params = model.embedding_params(args.num_devices)
    metrics = {"load_seconds": round(time.perf_counter() - t0, 3), "fingerprint": run_attrs["fingerprint"],
               "output": published, "devices": params.parallel.size, "device_kind": params.parallel.describe(),
               "processes": num_shards, "shard_index": shard_index, "window": args.window}
    counts = dict.fromkeys(("sequences_in_fasta", "sequences_total", "skipped_existing", "sequences_embedded",
                            "residues_embedded", "windows"), 0)

    writer = OutputWriter(output, run_attrs)
    done = writer.open()
    activity, bar = DeviceActivity(), None
    try:
        metrics["compilation_cache_dir"] = enable_compilation_cache(args.compilation_cache_dir)
        if not args.no_progress:
            from tqdm.auto import tqdm

            bar = tqdm(unit="res", unit_scale=True, desc=os.path.basename(args.fasta), dynamic_ncols=True,
                       smoothing=0.05)
        ahead = prefetch(_windows(first, windows, done, num_shards, shard_index, args, prefix_id, counts))
        t1 = time.perf_counter()
        _write_all(writer, args, stream_embeddings(
            model.config, params, _count_residues(ahead, bar), pooling=args.pooling, dtype=args.dtype,
            batch_tokens=args.batch_tokens, skip_first=prefix_id is not None,
            attention_chunk_size=args.attention_chunk_size, activity=activity, bar=bar,
            few_shapes=len(first) == args.window))
        compute_seconds = time.perf_counter() - t1
        writer.finish()
        if published != output:
            publish(output, published)
        seconds = time.perf_counter() - t1
    except Exception:
        writer.flush()  # e.g. a bad record in a later window: what was computed is kept for the re-run
        raise
    finally:
        busy = activity.close()
        if bar is not None:
            bar.close()
        writer.close()
    metrics.update(counts, embed_seconds=round(seconds, 3), assemble_seconds=round(seconds - compute_seconds, 3),
                   residues_per_second=round(counts["residues_embedded"] / max(seconds, 1e-9), 1),
                   device_busy_seconds=round(busy, 3),
                   device_idle_share=round(1 - busy / max(compute_seconds, 1e-9), 4),  # while embedding
                   device_idle_share_with_assembly=round(1 - busy / max(seconds, 1e-9), 4))
    return metrics


def _write_all(writer, args: argparse.Namespace, stream) -> None:
    """Adds every ``(window's records, index, embedding)`` of ``stream`` to ``writer``, flushing (in a thread)
    when a window is done and every ``--flush_seconds``, so a killed run keeps it."""
    current, last_flush = None, time.perf_counter()
    for todo, idx, emb in stream:
        if todo is not current or time.perf_counter() - last_flush >= args.flush_seconds:
            writer.flush(wait=False)
            current, last_flush = todo, time.perf_counter()
        rec = todo[idx]
        writer.add(rec.id, emb, {
            "original_id": rec.description, "length": len(rec.sequence), "pooling": args.pooling,
            "dtype": args.dtype, "truncated": args.max_length is not None and len(rec.sequence) + 1 > args.max_length})


def _count_residues(windows, bar):
    """Passes the windows on, growing the progress bar's total as each is reached."""
    for todo, encoded in windows:
        if bar is not None:
            bar.total = (bar.total or 0) + sum(len(r.sequence) for r in todo)
            bar.refresh()
        yield todo, encoded


def main(argv=None) -> int:
    args = parse_args(argv)
    from ankh_jax import flags
    from ankh_jax.io.embeddings_h5 import write_metrics

    try:
        metrics = run(args)
    except flags.command_errors() as err:
        return flags.report("embed", err)
    metrics_file = metrics_path(args, metrics["output"])
    write_metrics(metrics_file, {**metrics, "model": args.model, "pooling": args.pooling, "dtype": args.dtype})
    print(f"embedded {metrics['sequences_embedded']} sequences ({metrics['skipped_existing']} already in "
          f"{metrics['output']}) on {metrics['devices']} device(s); metrics in {metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
