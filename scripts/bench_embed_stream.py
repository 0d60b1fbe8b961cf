"""Memory and device use of ``python -m ankh_jax.embed`` on large FASTA files, streamed in windows.

    python scripts/bench_embed_stream.py                          # 10^5 and 10^6 synthetic sequences, tiny model
    python scripts/bench_embed_stream.py --counts=100000 --window=10000
    python scripts/bench_embed_stream.py --sink=none    # the streaming pipeline without the HDF5 output

For each count, a FASTA of that many synthetic proteins (--min_length..--max_length residues, seeded) is embedded
with mean pooling by a tiny random encoder (``ankh_jax.testing.write_random_encoder``: 2 layers of width 64), each
run in a fresh process; the table gives its peak RSS (the process's own ``ru_maxrss``), wall time, residues/s and
the devices' idle share from the run's metrics JSON (``device_idle_share``: the share of the embedding phase when
no batch was running, that is compiling, reading and tokenizing, or writing while nothing ran). With windows of
--window sequences memory should not grow with the file beyond the per-id costs (8 bytes per id for the
duplicate check, the ids already in the output, the HDF5 output's index).

``--sink=none`` runs the command's pipeline without its output: ``read_windows`` (validation, duplicate ids),
tokenizing in a thread ahead, ``stream_embeddings`` over the devices, the embeddings dropped. It isolates the
streaming's memory and device use from the HDF5 output, whose per-dataset cost (about a millisecond per id on
this machine) dominates a run of a million short sequences with a tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="counts 2000 and 20000, windows of 1000")
    p.add_argument("--counts", default="100000,1000000", help="comma list of sequence counts")
    p.add_argument("--min_length", type=int, default=20)
    p.add_argument("--max_length", type=int, default=60)
    p.add_argument("--window", type=int, default=None, help="embed --window (default: the command's)")
    p.add_argument("--batch_tokens", type=int, default=None)
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sink", choices=("hdf5", "none"), default="hdf5",
                   help="hdf5: the embed command; none: its pipeline with the embeddings dropped")
    p.add_argument("--_pipeline", default=None, help=argparse.SUPPRESS)
    p.add_argument("--notes", default="", help="anything about the machine's state worth keeping in the record")
    args = p.parse_args(argv)
    if args.quick:
        args.counts, args.window = "2000,20000", 1000
    return args


def write_synthetic_fasta(path: str, count: int, args) -> int:
    """``count`` random proteins; returns the residues written."""
    rng = np.random.default_rng(args.seed)
    letters = np.frombuffer(bench_common.AMINO_ACIDS.encode(), np.uint8)
    residues = 0
    with open(path, "w") as f:
        for start in range(0, count, 100_000):
            n = min(100_000, count - start)
            lengths = rng.integers(args.min_length, args.max_length + 1, n)
            codes = letters[rng.integers(0, len(letters), int(lengths.sum()))].tobytes().decode()
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            f.writelines(f">syn{start + i}\n{codes[offsets[i]:offsets[i + 1]]}\n" for i in range(n))
            residues += int(lengths.sum())
    return residues


def run_embed(args, model: str, fasta: str, out: str) -> dict:
    argv = [f"--model={model}", f"--fasta={fasta}", f"--output={out}", "--pooling=mean", "--no_progress",
            "--compilation_cache_dir=", f"--dtype={args.dtype}"]
    argv += [f"--window={args.window}"] if args.window else []
    argv += [f"--batch_tokens={args.batch_tokens}"] if args.batch_tokens else []
    script = (f"import resource, sys; from ankh_jax.embed import main; rc = main({argv!r}); "
              "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
    with open(os.path.splitext(out)[0] + ".metrics.json") as f:
        metrics = json.load(f)
    return {"whole_process_seconds": seconds, "peak_rss_gib": peak / 2**20, "metrics": metrics}


def pipeline_worker(args, model: str, fasta: str) -> None:
    """The embed command's streaming without its output (``--sink=none``); prints its metrics as JSON."""
    import resource

    from ankh_jax.api import load_model
    from ankh_jax.data.fasta import read_windows
    from ankh_jax.inference.devices import DeviceActivity, prefetch
    from ankh_jax.inference.embedding import DEFAULT_BATCH_TOKENS, encode_sequences, stream_embeddings

    window = args.window or 100_000
    params_model = load_model(model, encoder_only=True, scan_layers=True)
    params = params_model.embedding_params()
    counts = {"windows": 0, "residues": 0, "embeddings": 0}

    def windows():
        for records in read_windows(fasta, window):
            counts["windows"] += 1
            counts["residues"] += sum(len(r.sequence) for r in records)
            yield records, encode_sequences([r.sequence for r in records])

    activity = DeviceActivity()
    t0 = time.perf_counter()
    for _ in stream_embeddings(params_model.config, params, prefetch(windows()), pooling="mean", dtype=args.dtype,
                               batch_tokens=args.batch_tokens or DEFAULT_BATCH_TOKENS, activity=activity,
                               few_shapes=True):
        counts["embeddings"] += 1
    seconds = time.perf_counter() - t0
    busy = activity.close()
    print("PIPELINE", json.dumps({**counts, "embed_seconds": round(seconds, 3), "window": window,
                                  "residues_per_second": round(counts["residues"] / seconds, 1),
                                  "device_busy_seconds": round(busy, 3), "devices": params.parallel.size,
                                  "device_idle_share": round(1 - busy / seconds, 4)}))
    print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_pipeline(args, model: str, fasta: str) -> dict:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if args.device == "cpu":
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, os.path.abspath(__file__), f"--_pipeline={model}|{fasta}"]
    cmd += [a for a in sys.argv[1:] if not a.startswith("--_")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    lines = done.stdout.splitlines()
    peak = int(next(line.split()[1] for line in lines if line.startswith("PEAK_RSS_KIB")))
    metrics = json.loads(next(line.split(" ", 1)[1] for line in lines if line.startswith("PIPELINE")))
    return {"whole_process_seconds": seconds, "peak_rss_gib": peak / 2**20, "metrics": metrics}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._pipeline:
        pipeline_worker(args, *args._pipeline.split("|"))
        return 0
    from ankh_jax import testing

    counts = [int(c) for c in args.counts.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_embed_stream_") as workdir:
        model = testing.write_random_encoder(os.path.join(workdir, "model"), "tiny", args.seed)
        for count in counts:
            fasta = os.path.join(workdir, f"syn{count}.fasta")
            residues = write_synthetic_fasta(fasta, count, args)
            res = (run_embed(args, model, fasta, os.path.join(workdir, f"emb{count}.h5")) if args.sink == "hdf5"
                   else run_pipeline(args, model, fasta))
            res.update(sequences=count, residues=residues, fasta_mib=os.path.getsize(fasta) / 2**20)
            results[count] = res
            m = res["metrics"]
            print(f"{count} sequences: peak RSS {res['peak_rss_gib']:.2f} GiB, {res['whole_process_seconds']:.0f} s, "
                  f"device idle {m['device_idle_share']:.1%}", file=sys.stderr, flush=True)
            os.remove(fasta)
    head = ["sequences", "residues", "FASTA MiB", "windows", "peak RSS GiB", "whole process s", "embed s",
            "residues/s (embed)", "device idle share", "devices"]
    rows = [[c, r["residues"], round(r["fasta_mib"], 1), r["metrics"]["windows"], round(r["peak_rss_gib"], 3),
             round(r["whole_process_seconds"], 1), r["metrics"]["embed_seconds"], r["metrics"]["residues_per_second"],
             r["metrics"]["device_idle_share"], r["metrics"]["devices"]] for c, r in results.items()]
    print(bench_common.format_table(head, rows))
    bench_common.write_result("bench_embed_stream", args.device, head=head, rows=rows, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, raw={str(c): r for c, r in results.items()},
                              notes=args.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
