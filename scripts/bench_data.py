"""Throughput of the pretraining input pipeline on ONE CPU core (target: >= 2000 examples/s).

    python scripts/bench_data.py [--copies=20] [--seconds=15] [--batch_size=32] [--inputs_length=512] [--quick]

Builds a UniRef50-format TFDS dataset from the shipped real proteins (``--copies`` renamed copies of the 1,446
sequences, so an epoch is long enough that per-epoch set-up does not count), pins the process to one core
(``sched_setaffinity``, like ``taskset -c 0``, before TensorFlow starts its thread pools), and times the full path
the trainer uses: ``make_input`` (TFDS read, shuffle, tokenise, random crop, 1-gram span corruption, EOS,
``EncDecFeatureConverter``, batching, the resumable iterator's numpy hand-off). Also times a restore from
``get_state()`` deep into an epoch against producing the same examples. Prints a table and writes it through
``bench_common`` to benchmarks/results/bench_data-cpu<cores>-<date>.json.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_common  # the scripts folder, on the path above; it puts the repository on the path

REPO = bench_common.REPO


def parse_args(argv=None):
    p = bench_common.make_parser(__doc__, quick_help="1 copy of the proteins, 2 s per configuration, restore at 20 batches")
    p.add_argument("--copies", type=int, default=20, help="copies of the shipped proteins in the bench dataset")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per configuration")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--cores", type=int, default=1, help="CPU cores to pin to")
    p.add_argument("--data_dir", default=None, help="where to build the bench dataset (default: a temp dir)")
    p.add_argument("--restore_batches", type=int, default=200, help="batches skipped before the restore timing")
    args = p.parse_args(argv)
    if args.quick:
        args.copies, args.seconds, args.restore_batches = 1, 2.0, 20
    return args


def build_dataset(data_dir: str, copies: int) -> None:
    from ankh_jax.data import uniref
    from ankh_jax.data.fasta import load_fasta, write_fasta

    records = load_fasta(os.path.join(REPO, "data", "sample_proteins.fasta"))
    os.makedirs(data_dir, exist_ok=True)
    fasta = os.path.join(data_dir, "bench.fasta")
    write_fasta(fasta, ((f"{r.id}#{c}", r.sequence) for c in range(copies) for r in records))
    uniref.build(fasta, data_dir, num_shards=4, validation_fraction=0.01)


def timed(it, seconds: float, count_examples) -> tuple[float, float, int]:
    """Warm up on 3 batches, then (examples/s, batches/s, examples) over ``seconds``."""
    for _ in range(3):
        next(it)
    examples = batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        examples += count_examples(next(it))
        batches += 1
    elapsed = time.perf_counter() - start
    return examples / elapsed, batches / elapsed, examples


def main(argv=None) -> int:
    args = parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, set(cores))  # before TF sizes its thread pools
    import numpy as np
    from ankh_jax.tasks import pretraining

    from ankh_jax.data.input_pipeline import make_input
    from ankh_jax.data.span_corruption import targets_length_for

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="ankh_bench_data_")
    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(data_dir, "uniref50", "1.0.0", "dataset_info.json")):
        build_dataset(data_dir, args.copies)
    build_s = time.perf_counter() - t0
    pretraining.set_data_dir(data_dir)
    lengths = {"inputs": args.inputs_length, "targets": targets_length_for(args.inputs_length)}

    def make(pack: bool):
        return make_input("uniref50_ankh", "train", feature_lengths=lengths, batch_size=args.batch_size, seed=0,
                          shuffle=True, pack=pack, repeat=True, shard_id=0, num_shards=1)

    rows = []
    unpacked = timed(make(False), args.seconds, lambda b: len(b["encoder_input_tokens"]))
    rows.append(("unpacked", *unpacked))
    packed_count = lambda b: int(sum(len(np.unique(s[s > 0])) for s in b["encoder_segment_ids"]))
    packed = timed(make(True), args.seconds, packed_count)
    rows.append(("packed", *packed))

    # Restore deep into the epoch: replays only reading + shuffle buffer for the skipped examples.
    skip_batches = args.restore_batches
    it = make(False)
    t0 = time.perf_counter()
    for _ in range(skip_batches):
        next(it)
    produce_s = time.perf_counter() - t0
    state = it.get_state()
    t0 = time.perf_counter()
    resumed = make(False)
    resumed.set_state(state)
    next(resumed)
    restore_s = time.perf_counter() - t0

    print(f"\ninput pipeline on {len(cores)} core(s) {cores}; inputs {lengths['inputs']}, targets "
          f"{lengths['targets']}, per-host batch {args.batch_size}; dataset {args.copies} x 1,446 real proteins "
          f"(built in {build_s:.1f} s at {data_dir})\n")
    print(f"| {'pipeline':<10} | {'examples/s':>10} | {'batches/s':>9} | {'examples timed':>14} | target  |")
    print(f"|{'-' * 12}|{'-' * 12}|{'-' * 11}|{'-' * 16}|---------|")
    for name, eps, bps, n in rows:
        ok = "met" if eps >= 2000 else "MISSED"
        print(f"| {name:<10} | {eps:>10.0f} | {bps:>9.1f} | {n:>14d} | {ok:<7} |")
    n_skip = skip_batches * args.batch_size
    print(f"\nrestore at example {n_skip}: {restore_s:.2f} s to the first batch, vs {produce_s:.2f} s to produce "
          f"those {n_skip} examples (set-up included in both)")
    results = {"cores": cores, "lengths": lengths, "batch_size": args.batch_size,
               "pipelines": {name: {"examples_per_s": eps, "batches_per_s": bps, "examples": n}
                             for name, eps, bps, n in rows},
               "restore": {"examples_skipped": n_skip, "restore_s": restore_s, "produce_s": produce_s}}
    head = ["pipeline", "examples/s", "batches/s", "examples timed", "target >= 2000/s"]
    table = [[name, round(eps), round(bps, 1), n, "met" if eps >= 2000 else "missed"] for name, eps, bps, n in rows]
    bench_common.write_result("bench_data", f"cpu{len(cores)}", head=head, rows=table, settings=vars(args),
                              out_dir=args.out_dir, quick=args.quick, **results)
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
